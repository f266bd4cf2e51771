//! What attention maps say in numbers: per-head entropy, the share of attention on the
//! previous token, the first token (an attention sink), the token itself and a local
//! window, a pattern label from those, and attention rollout across layers.

use serde::Serialize;

use super::maps::LayerMaps;

/// Tokens on either side counted as local (the token itself and the 2 before it).
pub const LOCAL_WINDOW: usize = 2;

/// A head's dominant behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Most weight on the token just before the query.
    PreviousToken,
    /// Most weight on the first token (an attention sink).
    FirstToken,
    /// Most weight on the query's own token.
    Diagonal,
    /// Most weight on white-space and punctuation tokens (word or line boundaries).
    Delimiter,
    /// Most weight within a few tokens before the query, none of them dominant.
    Local,
    /// Spread over the context (high entropy).
    Broad,
    /// None of the above.
    Mixed,
}

/// Share of a head's attention (averaged over queries) at or above which a pattern names it.
pub const DOMINANT: f64 = 0.5;
/// Share of the weight within the local window above which a head is local.
pub const LOCAL: f64 = 0.6;
/// Normalised entropy (entropy / log of the keys visible) above which a head is broad.
pub const BROAD_ENTROPY: f64 = 0.75;

/// One head's statistics, averaged over the query positions that have a choice (every
/// query but the one at position 0, which can only see itself under a causal mask).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HeadStats {
    pub layer: usize,
    pub head: usize,
    /// Mean entropy of the rows, in nats.
    pub entropy: f64,
    /// Mean of entropy / ln(position + 1) (the most a causal row can have), 0–1.
    pub normalized_entropy: f64,
    pub previous_token: f64,
    pub first_token: f64,
    pub diagonal: f64,
    /// Weight on the query and the [`LOCAL_WINDOW`] tokens before it.
    pub local: f64,
    /// Weight on white-space and punctuation tokens other than the first.
    pub delimiter: f64,
    pub pattern: Pattern,
}

/// The statistics of every head of `maps` (`layer`'s). Rows are query positions aligned
/// at the end of the keys (key `keys - queries + i` is query `i`'s own token).
/// `delimiters[j]` says whether key `j` is white space or punctuation (no delimiter share
/// when `None`).
pub fn head_stats(layer: usize, maps: &LayerMaps, delimiters: Option<&[bool]>) -> Vec<HeadStats> {
    let offset = maps.keys - maps.queries;
    (0..maps.heads)
        .map(|h| {
            let mut sums = [0.0f64; 7];
            let mut rows = 0usize;
            for i in 0..maps.queries {
                let pos = i + offset;
                if pos == 0 {
                    continue;
                }
                let row: Vec<f64> = (0..maps.keys)
                    .map(|j| f64::from(maps.at(h, i, j)))
                    .collect();
                // The keys a causal row sees: itself and every position before it.
                let visible = pos + 1;
                rows += 1;
                let entropy: f64 = row.iter().filter(|&&p| p > 0.0).map(|&p| -p * p.ln()).sum();
                sums[0] += entropy;
                sums[1] += entropy / (visible as f64).ln();
                sums[2] += row[pos - 1];
                sums[3] += row[0];
                sums[4] += row[pos];
                sums[5] += row[pos.saturating_sub(LOCAL_WINDOW)..=pos]
                    .iter()
                    .sum::<f64>();
                if let Some(d) = delimiters {
                    sums[6] += (1..maps.keys)
                        .filter(|&j| d.get(j) == Some(&true))
                        .map(|j| row[j])
                        .sum::<f64>();
                }
            }
            let n = rows.max(1) as f64;
            let [
                entropy,
                normalized_entropy,
                previous_token,
                first_token,
                diagonal,
                local,
                delimiter,
            ] = sums.map(|s| s / n);
            let mut stats = HeadStats {
                layer,
                head: h,
                entropy,
                normalized_entropy,
                previous_token,
                first_token,
                diagonal,
                local,
                delimiter,
                pattern: Pattern::Mixed,
            };
            stats.pattern = label(&stats);
            stats
        })
        .collect()
}

/// The pattern a head's statistics show: the first of previous-token, first-token,
/// diagonal and delimiter that holds [`DOMINANT`] of the weight, else local ([`LOCAL`] of
/// it in the window), else broad (normalised entropy above [`BROAD_ENTROPY`]), else mixed.
pub fn label(stats: &HeadStats) -> Pattern {
    if stats.previous_token >= DOMINANT {
        Pattern::PreviousToken
    } else if stats.first_token >= DOMINANT {
        Pattern::FirstToken
    } else if stats.diagonal >= DOMINANT {
        Pattern::Diagonal
    } else if stats.delimiter >= DOMINANT {
        Pattern::Delimiter
    } else if stats.local >= LOCAL {
        Pattern::Local
    } else if stats.normalized_entropy >= BROAD_ENTROPY {
        Pattern::Broad
    } else {
        Pattern::Mixed
    }
}

/// Attention rollout (Abnar & Zuidema, 2020) over `layers` in order: each layer's
/// head-averaged map with the residual added, `0.5·A + 0.5·I` renormalised by rows,
/// multiplied from the first layer up. Returns `[tokens][tokens]`: how much each
/// position's last-layer representation draws on each input token.
///
/// Every layer must cover the whole sequence (queries = keys = `tokens`).
pub fn rollout(layers: &[&LayerMaps]) -> Option<Vec<Vec<f64>>> {
    let n = layers.first()?.keys;
    if layers.iter().any(|m| m.keys != n || m.queries != n) {
        return None;
    }
    let mut total: Vec<Vec<f64>> = identity(n);
    for maps in layers {
        total = matmul(&residual_attention(maps), &total);
    }
    Some(total)
}

/// A layer's head-averaged attention with the residual connection counted in:
/// `0.5·mean_h(A_h) + 0.5·I`, rows renormalised. `[queries][keys]`, queries = keys.
pub fn residual_attention(maps: &LayerMaps) -> Vec<Vec<f64>> {
    let n = maps.keys;
    let mut a = vec![vec![0.0f64; n]; maps.queries];
    for h in 0..maps.heads {
        for (i, row) in a.iter_mut().enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                *x += f64::from(maps.at(h, i, j)) / maps.heads as f64;
            }
        }
    }
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += 1.0;
        let sum: f64 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= sum);
    }
    a
}

fn identity(n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect()
}

fn matmul(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = b.first().map_or(0, Vec::len);
    a.iter()
        .map(|row| {
            (0..n)
                .map(|j| row.iter().zip(b).map(|(x, b_row)| x * b_row[j]).sum())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-head causal map over `n` tokens whose row `i` is `row(i)`.
    fn layer(n: usize, row: impl Fn(usize) -> Vec<f32>) -> LayerMaps {
        LayerMaps {
            heads: 1,
            queries: n,
            keys: n,
            probs: (0..n).flat_map(row).collect(),
        }
    }

    fn one_hot(n: usize, at: usize) -> Vec<f32> {
        (0..n).map(|j| if j == at { 1.0 } else { 0.0 }).collect()
    }

    #[test]
    fn labels_previous_token_sink_and_uniform_heads() {
        let n = 6;
        let prev = layer(n, |i| one_hot(n, i.saturating_sub(1)));
        let s = head_stats(0, &prev, None)[0];
        assert_eq!(s.pattern, Pattern::PreviousToken);
        assert!((s.previous_token - 1.0).abs() < 1e-9 && s.entropy.abs() < 1e-9);

        let sink = layer(n, |_| one_hot(n, 0));
        assert_eq!(head_stats(0, &sink, None)[0].pattern, Pattern::FirstToken);

        // Every query looks at the last delimiter (positions 1 and 3) at or before it.
        let delimiters = [false, true, false, true, false, false];
        let last_delimiter = layer(n, |i| match i {
            0 => one_hot(n, 0),
            1..=2 => one_hot(n, 1),
            _ => one_hot(n, 3),
        });
        let s = head_stats(0, &last_delimiter, Some(&delimiters))[0];
        assert!((s.delimiter - 1.0).abs() < 1e-9, "{}", s.delimiter);
        assert!(s.previous_token < 0.5 && s.diagonal < 0.5);
        assert_eq!(s.pattern, Pattern::Delimiter);

        // Long enough that a uniform row is not mostly its last three keys.
        let n = 20;
        let uniform = layer(n, |i| {
            (0..n)
                .map(|j| if j <= i { 1.0 / (i + 1) as f32 } else { 0.0 })
                .collect()
        });
        let s = head_stats(0, &uniform, None)[0];
        assert_eq!(s.pattern, Pattern::Broad);
        assert!((s.normalized_entropy - 1.0).abs() < 1e-6);
        // Rows 1..20 see 2..20 keys: mean entropy is the mean of ln(k).
        let want = (2..=20).map(|k| (k as f64).ln()).sum::<f64>() / 19.0;
        assert!((s.entropy - want).abs() < 1e-6, "{} vs {want}", s.entropy);
    }

    #[test]
    fn rollout_of_identity_attention_is_identity_and_of_sinks_flows_to_token_0() {
        let n = 4;
        let own = layer(n, |i| one_hot(n, i));
        let r = rollout(&[&own, &own]).unwrap();
        assert_eq!(r, identity(n));
        // A sink layer: 0.5·e_0 + 0.5·e_i per row; two of them compose to 0.75·e_0 + 0.25·e_i.
        let sink = layer(n, |_| one_hot(n, 0));
        let r = rollout(&[&sink, &sink]).unwrap();
        assert!((r[3][0] - 0.75).abs() < 1e-12 && (r[3][3] - 0.25).abs() < 1e-12);
        assert!((r[0][0] - 1.0).abs() < 1e-12);
    }
}
