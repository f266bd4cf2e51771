//! Absolute position encodings that are not learned.

/// The sinusoidal table of "Attention Is All You Need", `[max_seq, d_model]` row-major:
/// `pe[pos, 2i] = sin(pos / 10000^(2i/d))`, `pe[pos, 2i+1] = cos(pos / 10000^(2i/d))`
/// (for odd `d_model` the last column is a sine).
pub fn sinusoidal_table(max_seq: usize, d_model: usize) -> Vec<f32> {
    let mut table = Vec::with_capacity(max_seq * d_model);
    for pos in 0..max_seq {
        for c in 0..d_model {
            let i = (c / 2) as f64;
            let angle = pos as f64 / 10_000f64.powf(2.0 * i / d_model as f64);
            table.push(if c % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
        }
    }
    table
}
