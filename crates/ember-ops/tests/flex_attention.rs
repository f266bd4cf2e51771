//! FlexAttention: every mask and score modifier, on every path, against the explicit
//! `[seq_q, seq_kv]` reference in values and gradients; block masks against entry-by-entry
//! evaluation; ALiBi slopes against their closed form.

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};
use ember_ops::alibi_slopes;
use ember_ops::flex_attention::{
    AttentionPath, BlockMask, FlexOptions, MaskMod, ScoreIndex, ScoreMod, TileKind, alibi_bias,
    attention_probabilities, flex_attention,
};
use ember_ops::reference::explicit_flex_attention;

type B = Flex;
type AD = Autodiff<Flex>;

fn random<Bk: Backend>(shape: [usize; 4], seed: u64) -> Tensor<Bk, 4> {
    Bk::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.5), &Default::default())
}

fn masks(seq: usize) -> Vec<(&'static str, MaskMod)> {
    // Two packed documents per sequence, split at different points.
    let docs: Vec<Vec<u32>> = [4, 7]
        .iter()
        .map(|&split| (0..seq).map(|p| u32::from(p >= split)).collect())
        .collect();
    vec![
        ("full", MaskMod::Full),
        ("causal", MaskMod::Causal),
        ("sliding-3", MaskMod::SlidingWindow(3)),
        ("prefix-lm-4", MaskMod::PrefixLm(4)),
        (
            "document+causal",
            MaskMod::document(docs).and(MaskMod::Causal),
        ),
        (
            // Varies with the head and masks whole rows (q = 0 on head 0).
            "causal+custom",
            MaskMod::Causal.and(MaskMod::custom(|_, h, q, kv| (q + kv + h) % 3 != 0)),
        ),
        (
            "sliding-2|prefix-2",
            MaskMod::SlidingWindow(2).or(MaskMod::PrefixLm(2)),
        ),
        (
            // Rows of different lengths, left-padded: sequence 1's keys start at 5.
            "row-offset causal",
            MaskMod::row_offset(MaskMod::Causal, vec![0, 5]),
        ),
        (
            "row-offset sliding-3",
            MaskMod::row_offset(MaskMod::SlidingWindow(3), vec![3, 0]),
        ),
    ]
}

fn score_mods<Bk: Backend>(n_heads: usize) -> Vec<(&'static str, ScoreMod<Bk>)> {
    let alibi = ScoreMod::Alibi(alibi_slopes(n_heads));
    vec![
        ("none", ScoreMod::none()),
        ("alibi", alibi.clone()),
        ("softcap", ScoreMod::SoftCap(2.0)),
        ("softcap>alibi", ScoreMod::SoftCap(2.0).then(alibi.clone())),
        ("alibi>softcap", alibi.then(ScoreMod::SoftCap(2.0))),
        (
            "custom",
            ScoreMod::custom(|s: Tensor<Bk, 4>, i: &ScoreIndex<Bk>| {
                s * (i.head.clone().mul_scalar(0.1).add_scalar(1.0))
                    - (i.q_idx.clone() - i.kv_idx.clone()).abs().mul_scalar(0.05)
                    + i.batch.clone().mul_scalar(0.3)
            }),
        ),
    ]
}

fn paths(fused: bool) -> Vec<FlexOptions> {
    let mut paths = vec![
        FlexOptions::default(),
        FlexOptions {
            path: AttentionPath::Chunked,
            block_size: 4,
            ..Default::default()
        },
    ];
    if fused {
        paths.push(FlexOptions {
            path: AttentionPath::Fused,
            ..Default::default()
        });
    }
    paths
}

/// `(n_heads, n_kv_heads, seq_q, seq_kv)`: GQA over a full sequence, MHA for a block after
/// a cache, MQA decoding one token.
const SHAPES: [(usize, usize, usize, usize); 3] = [(4, 2, 11, 11), (3, 3, 3, 11), (4, 1, 1, 11)];

#[test]
fn every_modifier_matches_the_explicit_reference_in_values() {
    for (h, kv, sq, skv) in SHAPES {
        let q = random::<B>([2, h, sq, 8], 1);
        let k = random::<B>([2, kv, skv, 8], 2);
        let v = random::<B>([2, kv, skv, 8], 3);
        for (mask_name, mask) in masks(skv) {
            for (mod_name, score_mod) in score_mods::<B>(h) {
                let want = explicit_flex_attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    &score_mod,
                    &mask,
                    1.0 / 8f64.sqrt(),
                );
                for options in paths(score_mod.fused_form().is_some()) {
                    let got = flex_attention(
                        q.clone(),
                        k.clone(),
                        v.clone(),
                        &score_mod,
                        &mask,
                        &options,
                    );
                    let diff = max_diff(got, want.clone());
                    assert!(
                        diff < 2e-5,
                        "output differs by {diff} for mask {mask_name}, score mod {mod_name}, {options:?}, shape {:?}",
                        (h, kv, sq, skv)
                    );
                }
            }
        }
    }
}

fn max_diff<Bk: Backend>(a: Tensor<Bk, 4>, b: Tensor<Bk, 4>) -> f32 {
    let (a, b) = (
        a.into_data().to_vec::<f32>().unwrap(),
        b.into_data().to_vec::<f32>().unwrap(),
    );
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

fn grads(
    out: Tensor<AD, 4>,
    w: &Tensor<AD, 4>,
    q: &Tensor<AD, 4>,
    k: &Tensor<AD, 4>,
    v: &Tensor<AD, 4>,
) -> Vec<TensorData> {
    let g = (out * w.clone()).sum().backward();
    [q, k, v]
        .iter()
        .map(|t| t.grad(&g).expect("a gradient").into_data())
        .collect()
}

#[test]
fn every_modifier_matches_the_explicit_reference_in_gradients() {
    for (h, kv, sq, skv) in SHAPES {
        let q = random::<AD>([2, h, sq, 8], 4).require_grad();
        let k = random::<AD>([2, kv, skv, 8], 5).require_grad();
        let v = random::<AD>([2, kv, skv, 8], 6).require_grad();
        let w = random::<AD>([2, h, sq, 8], 7);
        for (mask_name, mask) in masks(skv) {
            for (mod_name, score_mod) in score_mods::<AD>(h) {
                let want = grads(
                    explicit_flex_attention(
                        q.clone(),
                        k.clone(),
                        v.clone(),
                        &score_mod,
                        &mask,
                        1.0 / 8f64.sqrt(),
                    ),
                    &w,
                    &q,
                    &k,
                    &v,
                );
                for options in paths(score_mod.fused_form().is_some()) {
                    let out = flex_attention(
                        q.clone(),
                        k.clone(),
                        v.clone(),
                        &score_mod,
                        &mask,
                        &options,
                    );
                    let got = grads(out, &w, &q, &k, &v);
                    for (name, (g, e)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                        let diff = g
                            .to_vec::<f32>()
                            .unwrap()
                            .iter()
                            .zip(e.to_vec::<f32>().unwrap())
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max);
                        assert!(
                            diff < 1e-4,
                            "{name} differs by {diff} for mask {mask_name}, score mod {mod_name}, {options:?}, shape {:?}",
                            (h, kv, sq, skv)
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn block_masks_agree_with_entry_by_entry_evaluation() {
    let (batch, heads, seq_q, seq_kv) = (2, 3, 13, 17);
    for (name, mask) in masks(seq_kv) {
        for (qb, kb) in [(4, 4), (3, 5), (16, 16), (1, 2)] {
            let blocks = BlockMask::new(&mask, batch, heads, seq_q, seq_kv, qb, kb);
            let (q_tiles, kv_tiles) = blocks.tiles();
            for b in 0..batch {
                for h in 0..heads {
                    for qt in 0..q_tiles {
                        for kt in 0..kv_tiles {
                            let kept: Vec<bool> = blocks
                                .q_range(qt)
                                .flat_map(|i| blocks.kv_range(kt).map(move |j| (i, j)))
                                .map(|(i, j)| mask.keep(b, h, i, j))
                                .collect();
                            let want = if kept.iter().all(|&k| k) {
                                TileKind::Full
                            } else if kept.iter().any(|&k| k) {
                                TileKind::Partial
                            } else {
                                TileKind::Empty
                            };
                            let got = blocks.kind(b, h, qt, kt);
                            // Exact for single masks; compositions are sound (never
                            // `Empty`/`Full` wrongly) but may say `Partial`.
                            let composed = matches!(mask, MaskMod::And(..) | MaskMod::Or(..));
                            assert!(
                                got == want || (composed && got == TileKind::Partial),
                                "{name} tile ({qt}, {kt}) of {qb}x{kb}, batch {b}, head {h}: {got:?}, want {want:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn causal_and_sliding_window_block_masks_skip_the_expected_tiles() {
    // 16 x 16 scores in 4 x 4 tiles: causal keeps the 10 tiles on and below the
    // diagonal (4 of them partial); a window of 4 keeps the diagonal and the band below.
    let causal = BlockMask::new(&MaskMod::Causal, 1, 1, 16, 16, 4, 4);
    assert_eq!(causal.counts(), (6, 4, 6));
    let window = BlockMask::new(&MaskMod::SlidingWindow(4), 1, 1, 16, 16, 4, 4);
    assert_eq!(window.counts(), (9, 7, 0));
}

#[test]
fn alibi_slopes_follow_the_closed_form() {
    let pow2 = |e: f64| 2f64.powf(e) as f32;
    assert_eq!(
        alibi_slopes(8),
        (1..=8).map(|i| pow2(-(i as f64))).collect::<Vec<_>>()
    );
    assert_eq!(
        alibi_slopes(4),
        [pow2(-2.0), pow2(-4.0), pow2(-6.0), pow2(-8.0)]
    );
    // 12 heads: the 8-head slopes, then odd powers of 2^(-1/2) (BLOOM's rule).
    let mut twelve: Vec<f32> = (1..=8).map(|i| pow2(-(i as f64))).collect();
    twelve.extend([pow2(-0.5), pow2(-1.5), pow2(-2.5), pow2(-3.5)]);
    let got = alibi_slopes(12);
    for (a, b) in got.iter().zip(&twelve) {
        assert!((a - b).abs() < 1e-7, "{got:?} vs {twelve:?}");
    }
    // 6 heads: 4-head slopes then 2^(-1), 2^(-3).
    let got = alibi_slopes(6);
    let want = [
        pow2(-2.0),
        pow2(-4.0),
        pow2(-6.0),
        pow2(-8.0),
        pow2(-1.0),
        pow2(-3.0),
    ];
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-7, "{got:?} vs {want:?}");
    }
}

#[test]
fn alibi_bias_is_minus_slope_times_distance() {
    let slopes = alibi_slopes(2);
    let index = ScoreIndex::<B>::new(1, 2, 3..5, 0..5, &Default::default());
    let bias: Vec<f32> = alibi_bias(&slopes, &index).into_data().to_vec().unwrap();
    for h in 0..2 {
        for (r, q) in (3..5).enumerate() {
            for kv in 0..5 {
                let want = -slopes[h] * (q as f32 - kv as f32).abs();
                assert_eq!(bias[(h * 2 + r) * 5 + kv], want);
            }
        }
    }
}

#[test]
fn chunked_attention_of_a_long_sequence_matches_the_fused_kernel() {
    // 300 positions in 64-wide tiles: several partial and skipped tiles.
    let q = random::<B>([1, 4, 300, 16], 8);
    let k = random::<B>([1, 2, 300, 16], 9);
    let v = random::<B>([1, 2, 300, 16], 10);
    let chunked = flex_attention(
        q.clone(),
        k.clone(),
        v.clone(),
        &ScoreMod::none(),
        &MaskMod::Causal,
        &FlexOptions {
            path: AttentionPath::Chunked,
            block_size: 64,
            ..Default::default()
        },
    );
    let fused = ember_ops::fused::attention(q, k, v, true);
    chunked
        .into_data()
        .assert_approx_eq::<f32>(&fused.into_data(), Tolerance::absolute(2e-5));
}

#[test]
fn bad_modifiers_are_reported() {
    assert!(MaskMod::SlidingWindow(0).check(1, 4).is_err());
    let docs = MaskMod::document(vec![vec![0, 0, 1]]);
    assert!(docs.check(1, 3).is_ok());
    assert!(docs.check(1, 4).unwrap_err().contains("cover 3 positions"));
    assert!(docs.check(2, 3).unwrap_err().contains("batch has 2"));
    assert!(
        ScoreMod::<B>::Alibi(alibi_slopes(3))
            .check(4)
            .unwrap_err()
            .contains("3 slopes for 4 heads")
    );
    assert!(ScoreMod::<B>::SoftCap(0.0).check(4).is_err());
}

// ---------------------------------------------------------------------------------------
// Literal mask tables. Every table below is written out by hand from the mask's
// definition (PyTorch FlexAttention semantics: `keep[q][kv]`, 1 = the query at absolute
// position q may attend to the key at position kv), never computed by the code under
// test. Tile tables use F = full, P = partial, E = empty.
// ---------------------------------------------------------------------------------------

type Table8 = [[u8; 8]; 8];

/// Sliding window of 3, causal (Mistral: the query's own key and the 2 before it).
const SLIDING_WINDOW_3: Table8 = [
    [1, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0],
    [0, 1, 1, 1, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 1, 1, 1, 0],
    [0, 0, 0, 0, 0, 1, 1, 1],
];

/// Prefix-LM with a prefix of 3: positions 0..3 see each other bidirectionally, every
/// later query sees the whole prefix and is causal after it.
const PREFIX_LM_3: Table8 = [
    [1, 1, 1, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 0],
    [1, 1, 1, 1, 1, 1, 1, 1],
];

/// Document ids of the two packed sequences used below.
const DOC_IDS: [[u32; 8]; 2] = [[0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 1, 2, 2]];

/// Documents [0,0,0,1,1,2,2,2], bidirectional within a document.
const DOCUMENT_0: Table8 = [
    [1, 1, 1, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 1, 0, 0, 0],
    [0, 0, 0, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 1, 1, 1],
    [0, 0, 0, 0, 0, 1, 1, 1],
    [0, 0, 0, 0, 0, 1, 1, 1],
];

/// Documents [0,0,0,1,1,2,2,2], causal within a document.
const DOCUMENT_CAUSAL_0: Table8 = [
    [1, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0],
    [0, 0, 0, 1, 0, 0, 0, 0],
    [0, 0, 0, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 1, 0, 0],
    [0, 0, 0, 0, 0, 1, 1, 0],
    [0, 0, 0, 0, 0, 1, 1, 1],
];

/// Documents [0,0,1,1,1,1,2,2], causal within a document.
const DOCUMENT_CAUSAL_1: Table8 = [
    [1, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 0, 0, 0],
    [0, 0, 1, 1, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 0, 0, 0],
    [0, 0, 1, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0, 0, 1, 1],
];

fn document_mask() -> MaskMod {
    MaskMod::document(DOC_IDS.iter().map(|ids| ids.to_vec()).collect())
}

/// Asserts `mask.keep` for every `(q, kv)` pair of sequence `b` (and every head) against
/// `table`, and the element mask `hidden` (burn's convention, `true` = hidden) too.
fn assert_keep_table(name: &str, mask: &MaskMod, b: usize, table: &Table8) {
    for h in 0..2 {
        for (q, row) in table.iter().enumerate() {
            for (kv, &want) in row.iter().enumerate() {
                assert_eq!(
                    mask.keep(b, h, q, kv),
                    want == 1,
                    "{name}: keep(batch {b}, head {h}, q {q}, kv {kv})"
                );
            }
        }
    }
    let hidden: Vec<bool> = mask
        .hidden::<B>(b + 1, 1, 0..8, 0..8, &Default::default())
        .narrow(0, b, 1)
        .into_data()
        .to_vec()
        .unwrap();
    let want: Vec<bool> = table.iter().flatten().map(|&k| k == 0).collect();
    assert_eq!(hidden, want, "{name}: element mask of sequence {b}");
}

#[test]
fn sliding_window_mask_keeps_the_literal_table() {
    assert_keep_table(
        "sliding-window-3",
        &MaskMod::SlidingWindow(3),
        0,
        &SLIDING_WINDOW_3,
    );
}

#[test]
fn prefix_lm_mask_keeps_the_literal_table() {
    assert_keep_table("prefix-lm-3", &MaskMod::PrefixLm(3), 0, &PREFIX_LM_3);
}

#[test]
fn document_masks_keep_the_literal_tables() {
    assert_keep_table("document", &document_mask(), 0, &DOCUMENT_0);
    let causal = document_mask().and(MaskMod::Causal);
    assert_keep_table("document+causal", &causal, 0, &DOCUMENT_CAUSAL_0);
    assert_keep_table("document+causal", &causal, 1, &DOCUMENT_CAUSAL_1);
}

/// Asserts the tile kinds of `blocks` for sequence `b` (every head) against rows of
/// `F`/`P`/`E`.
fn assert_tiles(name: &str, blocks: &BlockMask, b: usize, want: &[&str]) {
    let (q_tiles, kv_tiles) = blocks.tiles();
    assert_eq!((q_tiles, kv_tiles), (want.len(), want[0].len()), "{name}");
    for (qt, row) in want.iter().enumerate() {
        for (kt, c) in row.chars().enumerate() {
            let kind = match c {
                'F' => TileKind::Full,
                'P' => TileKind::Partial,
                'E' => TileKind::Empty,
                _ => unreachable!("bad tile letter {c}"),
            };
            for h in 0..2 {
                assert_eq!(
                    blocks.kind(b, h, qt, kt),
                    kind,
                    "{name}: tile ({qt}, {kt}) of sequence {b}, head {h} (q {:?}, kv {:?})",
                    blocks.q_range(qt),
                    blocks.kv_range(kt)
                );
            }
        }
    }
}

#[test]
fn block_masks_classify_tiles_as_the_literal_tables() {
    // 8 x 8 scores in 2 x 2 tiles: tile (qt, kt) holds queries 2qt, 2qt+1 and keys
    // 2kt, 2kt+1.
    let tiles = |mask: &MaskMod| BlockMask::new(mask, 2, 2, 8, 8, 2, 2);
    assert_tiles(
        "sliding-window-3",
        &tiles(&MaskMod::SlidingWindow(3)),
        0,
        &["PEEE", "PPEE", "EPPE", "EEPP"],
    );
    assert_tiles(
        "sliding-window-4",
        &tiles(&MaskMod::SlidingWindow(4)),
        0,
        &["PEEE", "FPEE", "PFPE", "EPFP"],
    );
    assert_tiles(
        "prefix-lm-3",
        &tiles(&MaskMod::PrefixLm(3)),
        0,
        &["FPEE", "FPEE", "FFPE", "FFFP"],
    );
    // Tiles of sequence 0 hold documents {0}, {0,1}, {1,2}, {2}.
    assert_tiles(
        "document",
        &tiles(&document_mask()),
        0,
        &["FPEE", "PPPE", "EPPP", "EEPF"],
    );
    let doc_causal = tiles(&document_mask().and(MaskMod::Causal));
    assert_tiles(
        "document+causal",
        &doc_causal,
        0,
        &["PEEE", "PPEE", "EPPE", "EEPP"],
    );
    // Sequence 1 ([0,0,1,1,1,1,2,2]): tiles hold documents {0}, {1}, {1}, {2}.
    assert_tiles(
        "document+causal",
        &doc_causal,
        1,
        &["PEEE", "EPEE", "EFPE", "EEEP"],
    );
    // Three queries after five cached positions (absolute 5, 6 | 7), window 3.
    assert_tiles(
        "sliding-window-3 after a cache",
        &BlockMask::new(&MaskMod::SlidingWindow(3), 1, 2, 3, 8, 2, 2),
        0,
        &["EPFP", "EEPF"],
    );
}

/// Runs attention with zero queries (every score 0, so each query averages the values of
/// the keys it keeps, uniformly) and one-hot values (`v[kv] = e_kv`): output row q is
/// `keep[q] / sum(keep[q])`, the mask's row made visible. Checked against `tables`
/// (one per sequence) for the last `seq_q` rows, on every path.
fn assert_attention_follows_tables(name: &str, mask: &MaskMod, tables: &[&Table8], seq_q: usize) {
    let (batch, heads, kv_heads, seq) = (tables.len(), 4, 2, 8);
    let device = Default::default();
    let q = Tensor::<B, 4>::zeros([batch, heads, seq_q, seq], &device);
    let k = random::<B>([batch, kv_heads, seq, seq], 11);
    let eye: Vec<f32> = (0..seq * seq)
        .map(|i| f32::from(u8::from(i / seq == i % seq)))
        .collect();
    let v = Tensor::<B, 2>::from_data(TensorData::new(eye, [seq, seq]), &device)
        .reshape([1, 1, seq, seq])
        .expand([batch, kv_heads, seq, seq]);
    let mut want = Vec::new();
    for table in tables {
        for _ in 0..heads {
            for row in &table[seq - seq_q..] {
                let kept = row.iter().map(|&k| f32::from(k)).sum::<f32>();
                want.extend(row.iter().map(|&k| f32::from(k) / kept));
            }
        }
    }
    let options = [
        FlexOptions::default(),
        FlexOptions {
            path: AttentionPath::Fused,
            ..Default::default()
        },
        FlexOptions {
            path: AttentionPath::Chunked,
            block_size: 2,
            ..Default::default()
        },
        FlexOptions {
            path: AttentionPath::Chunked,
            block_size: 3,
            ..Default::default()
        },
    ];
    for options in options {
        let got: Vec<f32> = flex_attention(
            q.clone(),
            k.clone(),
            v.clone(),
            &ScoreMod::none(),
            mask,
            &options,
        )
        .into_data()
        .to_vec()
        .unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (b, h, r, kv) = (
                i / (heads * seq_q * seq),
                i / (seq_q * seq) % heads,
                i / seq % seq_q,
                i % seq,
            );
            assert!(
                (g - w).abs() < 1e-6,
                "{name}, {options:?}: sequence {b}, head {h}, query {}, key {kv}: weight {g}, want {w}",
                r + seq - seq_q
            );
        }
    }
}

#[test]
fn attention_weights_follow_the_literal_mask_tables() {
    for seq_q in [8, 3, 1] {
        assert_attention_follows_tables(
            "sliding-window-3",
            &MaskMod::SlidingWindow(3),
            &[&SLIDING_WINDOW_3],
            seq_q,
        );
        assert_attention_follows_tables(
            "prefix-lm-3",
            &MaskMod::PrefixLm(3),
            &[&PREFIX_LM_3],
            seq_q,
        );
        assert_attention_follows_tables(
            "document+causal",
            &document_mask().and(MaskMod::Causal),
            &[&DOCUMENT_CAUSAL_0, &DOCUMENT_CAUSAL_1],
            seq_q,
        );
    }
}

/// Attention probabilities written out element by element in f64: scores `q·k / √d`,
/// ALiBi's `-slope[h]·|i - j|` and soft-capping as their definitions say, the mask
/// entry by entry, then a softmax over the kept keys.
fn scalar_probabilities(
    q: &[f32],
    k: &[f32],
    (batch, h, kv, sq, skv, d): (usize, usize, usize, usize, usize, usize),
    mask: &MaskMod,
    alibi: Option<&[f32]>,
    softcap: Option<f64>,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * h * sq * skv];
    for b in 0..batch {
        for head in 0..h {
            let kv_head = head / (h / kv);
            for row in 0..sq {
                let i = row + skv - sq;
                let mut scores = vec![f64::NEG_INFINITY; skv];
                for (j, score) in scores.iter_mut().enumerate() {
                    if !mask.keep(b, head, i, j) {
                        continue;
                    }
                    let qa = &q[((b * h + head) * sq + row) * d..][..d];
                    let ka = &k[((b * kv + kv_head) * skv + j) * d..][..d];
                    let mut s: f64 = qa.iter().zip(ka).map(|(x, y)| *x as f64 * *y as f64).sum();
                    s /= (d as f64).sqrt();
                    if let Some(cap) = softcap {
                        s = cap * (s / cap).tanh();
                    }
                    if let Some(slopes) = alibi {
                        s -= slopes[head] as f64 * (i as f64 - j as f64).abs();
                    }
                    *score = s;
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for (j, e) in exps.iter().enumerate() {
                    out[((b * h + head) * sq + row) * skv + j] = e / total;
                }
            }
        }
    }
    out
}

/// A score modifier and what the scalar reference applies for it: ALiBi slopes, a cap.
type ScalarCase<'a> = (&'static str, ScoreMod<B>, Option<&'a [f32]>, Option<f64>);

#[test]
fn attention_probabilities_match_a_scalar_softmax() {
    for (h, kv, sq, skv) in SHAPES {
        let q = random::<B>([2, h, sq, 8], 11);
        let k = random::<B>([2, kv, skv, 8], 12);
        let (qv, kvv) = (
            q.to_data().to_vec::<f32>().unwrap(),
            k.to_data().to_vec::<f32>().unwrap(),
        );
        let slopes = alibi_slopes(h);
        let mods: [ScalarCase<'_>; 3] = [
            ("none", ScoreMod::none(), None, None),
            (
                "alibi",
                ScoreMod::Alibi(slopes.clone()),
                Some(&slopes),
                None,
            ),
            (
                "softcap>alibi",
                ScoreMod::SoftCap(2.0).then(ScoreMod::Alibi(slopes.clone())),
                Some(&slopes),
                Some(2.0),
            ),
        ];
        for (mask_name, mask) in masks(skv) {
            for (mod_name, score_mod, alibi, softcap) in &mods {
                let got = attention_probabilities(q.clone(), k.clone(), score_mod, &mask, None)
                    .to_data()
                    .to_vec::<f32>()
                    .unwrap();
                let want = scalar_probabilities(
                    &qv,
                    &kvv,
                    (2, h, kv, sq, skv, 8),
                    &mask,
                    *alibi,
                    *softcap,
                );
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (*g as f64 - w).abs())
                    .fold(0.0, f64::max);
                assert!(
                    diff < 1e-5,
                    "probabilities differ by {diff} for mask {mask_name}, {mod_name}, shape {:?}",
                    (h, kv, sq, skv)
                );
            }
        }
    }
}

#[test]
fn attention_probabilities_times_values_is_the_attention_output() {
    let (h, kv, sq, skv) = (4, 2, 11, 11);
    let q = random::<B>([2, h, sq, 8], 21);
    let k = random::<B>([2, kv, skv, 8], 22);
    let v = random::<B>([2, kv, skv, 8], 23);
    let heads = Tensor::<B, 1, burn::tensor::Int>::from_data(
        TensorData::new(vec![0i64, 0, 1, 1], [4]),
        &Default::default(),
    );
    for (mask_name, mask) in masks(skv) {
        for (mod_name, score_mod) in score_mods::<B>(h) {
            let probs = attention_probabilities(q.clone(), k.clone(), &score_mod, &mask, None);
            let got = probs.matmul(v.clone().select(1, heads.clone()));
            let want = flex_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                &score_mod,
                &mask,
                &FlexOptions::default(),
            );
            let diff = max_diff(got, want);
            assert!(diff < 2e-5, "{mask_name} {mod_name}: {diff}");
        }
    }
}
