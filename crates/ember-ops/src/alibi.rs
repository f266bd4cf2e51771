//! ALiBi head slopes (Press et al., "Train Short, Test Long").

/// The slope of each head: for `n` a power of two, the geometric sequence
/// `2^(-8/n), 2^(-16/n), …, 2^(-8)`. Otherwise the slopes of the largest power of two
/// `p < n`, followed by every other slope of `2p` (odd powers of `2^(-4/p)`) for the
/// remaining `n - p` heads — the rule of the reference implementation, BLOOM and MPT.
pub fn alibi_slopes(n_heads: usize) -> Vec<f32> {
    if n_heads == 0 {
        return Vec::new();
    }
    let p = 1usize << n_heads.ilog2();
    let geometric = |count: usize, n: usize, powers: &mut dyn Iterator<Item = usize>| {
        let base = 2f64.powf(-8.0 / n as f64);
        powers
            .take(count)
            .map(|k| base.powi(k as i32) as f32)
            .collect::<Vec<_>>()
    };
    let mut slopes = geometric(p, p, &mut (1..));
    slopes.extend(geometric(n_heads - p, 2 * p, &mut (1..).step_by(2)));
    slopes
}
