//! The seams later capabilities plug into: a KV cache holding rows of different lengths
//! (truncate, fork, reorder, reads through a block table) and the forward hooks. Each is
//! checked against a plain, uncached forward pass of the same model.

use burn::backend::Flex;
use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};
use ember_nn::{
    ContiguousKvCache, ForwardHooks, ForwardOptions, KvCache, KvView, MlpKind, PositionKind,
    Transformer, TransformerConfig,
};
use ember_ops::RopeScaling;

type B = Flex;

/// One model per way positions enter: RoPE (GQA with a sliding window; MQA with Llama 3
/// scaling), learned positions with biases, ALiBi. (Not dynamic NTK: its cached keys keep
/// the frequencies of the length they were computed at, so a cached pass differs from an
/// uncached one by design, in `transformers` too.)
fn configs() -> Vec<(&'static str, TransformerConfig)> {
    let mut rope = TransformerConfig::llama(13, 16, 2, 4, 2, 24, 32);
    rope.init_std = 0.3;
    rope.sliding_window = Some(4);
    let mut ntk = TransformerConfig::llama(13, 16, 2, 4, 1, 24, 32);
    ntk.init_std = 0.3;
    ntk.rope_scaling = Some(RopeScaling::Llama3 {
        factor: 4.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_seq: 8,
    });
    let mut gpt = TransformerConfig::gpt2(13, 16, 2, 4, 32);
    gpt.init_std = 0.3;
    let mut alibi = TransformerConfig::llama(13, 16, 2, 4, 4, 24, 32);
    alibi.init_std = 0.3;
    alibi.position = PositionKind::Alibi;
    alibi.mlp = MlpKind::Gelu;
    vec![
        ("rope-window", rope),
        ("llama3-mqa", ntk),
        ("gpt2", gpt),
        ("alibi", alibi),
    ]
}

fn model(config: &TransformerConfig, seed: u64) -> Transformer<B> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    Transformer::new(config, &device).unwrap()
}

fn ids(rows: &[&[u32]]) -> Tensor<B, 2, Int> {
    let seq = rows[0].len();
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&t| t as i64))
        .collect();
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), seq]),
        &Default::default(),
    )
}

fn to_vec(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// The logits `[vocab]` at the last token of `sequence`, from an uncached pass.
fn reference_last(model: &Transformer<B>, sequence: &[u32]) -> Vec<f32> {
    let logits = model.forward(ids(&[sequence]), ForwardOptions::default());
    let [_, seq, vocab] = logits.dims();
    to_vec(logits.narrow(1, seq - 1, 1))[..vocab].to_vec()
}

/// One cached step: `step[r]` appended to row `r`; returns each row's logits `[vocab]`.
fn step(model: &Transformer<B>, cache: &mut ContiguousKvCache<B>, step: &[u32]) -> Vec<Vec<f32>> {
    let rows: Vec<&[u32]> = step.chunks(1).collect();
    let options = ForwardOptions {
        cache: Some(cache),
        ..Default::default()
    };
    let logits = model.forward(ids(&rows), options);
    let vocab = logits.dims()[2];
    to_vec(logits).chunks(vocab).map(|c| c.to_vec()).collect()
}

fn prefill(model: &Transformer<B>, cache: &mut ContiguousKvCache<B>, rows: &[&[u32]]) {
    let options = ForwardOptions {
        cache: Some(cache),
        ..Default::default()
    };
    model.forward(ids(rows), options);
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 2e-4, "{name}: logit {i}: {g} vs {w}");
    }
}

#[test]
fn rows_of_different_lengths_decode_as_each_sequence_alone() {
    for (name, config) in configs() {
        let model = model(&config, 7);
        let (a, b): (Vec<u32>, Vec<u32>) = (vec![1, 2, 3, 4, 5], vec![6, 7, 8, 9, 10]);
        let mut cache = ContiguousKvCache::<B>::new(config.n_layers);
        prefill(&model, &mut cache, &[&a, &b]);
        // Row 1 rewinds to 2 positions: the rows now differ in length (5 and 2).
        cache.truncate(1, 2);
        assert_eq!(cache.lengths(), vec![5, 2]);
        let mut seq_a = a.clone();
        let mut seq_b = b[..2].to_vec();
        for (t, (next_a, next_b)) in [(11, 12), (3, 0), (5, 9), (2, 2)].into_iter().enumerate() {
            let got = step(&model, &mut cache, &[next_a, next_b]);
            seq_a.push(next_a);
            seq_b.push(next_b);
            assert_close(
                &format!("{name} step {t} row 0"),
                &got[0],
                &reference_last(&model, &seq_a),
            );
            assert_close(
                &format!("{name} step {t} row 1"),
                &got[1],
                &reference_last(&model, &seq_b),
            );
        }
        assert_eq!(cache.lengths(), vec![seq_a.len(), seq_b.len()]);
    }
}

#[test]
fn fork_and_reorder_carry_each_rows_history() {
    for (name, config) in configs() {
        let model = model(&config, 8);
        let (a, b): (Vec<u32>, Vec<u32>) = (vec![4, 1, 7], vec![2, 2, 9]);
        let mut cache = ContiguousKvCache::<B>::new(config.n_layers);
        prefill(&model, &mut cache, &[&a, &b]);
        let forked = cache.fork(0);
        assert_eq!(forked, 2);
        // Rows: a, b, a. Reordered to: b, a (the fork), a, a.
        cache.reorder(&[1, 2, 0, 0]);
        let next = [5, 6, 7, 8];
        let got = step(&model, &mut cache, &next);
        let histories = [&b, &a, &a, &a];
        for (r, (history, &token)) in histories.iter().zip(&next).enumerate() {
            let mut seq = history.to_vec();
            seq.push(token);
            assert_close(
                &format!("{name} row {r}"),
                &got[r],
                &reference_last(&model, &seq),
            );
        }
    }
}

#[test]
fn truncating_every_row_to_one_length_or_to_nothing_keeps_decoding_exact() {
    for (name, config) in configs() {
        let model = model(&config, 10);
        let (a, b): (Vec<u32>, Vec<u32>) = (vec![1, 2, 3, 4], vec![5, 6, 7, 8]);
        let mut cache = ContiguousKvCache::<B>::new(config.n_layers);
        prefill(&model, &mut cache, &[&a, &b]);
        cache.truncate(0, 2);
        cache.truncate(1, 2);
        assert_eq!(cache.lengths(), vec![2, 2], "{name}");
        let got = step(&model, &mut cache, &[9, 10]);
        assert_close(name, &got[0], &reference_last(&model, &[1, 2, 9]));
        assert_close(name, &got[1], &reference_last(&model, &[5, 6, 10]));
        // Rewound to nothing: the next pass starts both rows afresh at position 0.
        cache.truncate(0, 0);
        cache.truncate(1, 0);
        assert!(cache.is_empty(), "{name}");
        prefill(&model, &mut cache, &[&[3, 3], &[4, 4]]);
        let got = step(&model, &mut cache, &[1, 2]);
        assert_close(name, &got[0], &reference_last(&model, &[3, 3, 1]));
        assert_close(name, &got[1], &reference_last(&model, &[4, 4, 2]));
        cache.reorder(&[]);
        assert!(cache.lengths().is_empty(), "{name}");
    }
}

/// A paged layout: blocks of 2 positions in a shared pool, each row's blocks out of order
/// in the pool; reading a row through the table gives its positions in order.
#[test]
fn a_view_reads_rows_through_its_block_table() {
    let device = Default::default();
    let (n_kv, block, d) = (2, 2, 3);
    let n_blocks = 5;
    let pool: Vec<f32> = (0..n_blocks * n_kv * block * d).map(|i| i as f32).collect();
    let keys = Tensor::<B, 4>::from_data(
        TensorData::new(pool.clone(), [n_blocks, n_kv, block, d]),
        &device,
    );
    let view = KvView {
        keys: keys.clone(),
        values: keys.mul_scalar(-1.0),
        block_table: vec![vec![3, 0, 4], vec![1]],
        lengths: vec![5, 1],
    };
    assert!(!view.is_dense());
    // Position `p` of a row is slot `p % block` of its `p / block`-th block.
    let expected = |blocks: &[usize], len: usize| {
        let mut out = Vec::new();
        for h in 0..n_kv {
            for p in 0..len {
                let (b, s) = (blocks[p / block], p % block);
                let at = ((b * n_kv + h) * block + s) * d;
                out.extend_from_slice(&pool[at..at + d]);
            }
        }
        out
    };
    for (r, (blocks, len)) in [(vec![3, 0, 4], 5), (vec![1], 1)].into_iter().enumerate() {
        let (k, v) = view.row(r);
        assert_eq!(k.dims(), [1, n_kv, len, d]);
        let want = expected(&blocks, len);
        assert_eq!(k.into_data().to_vec::<f32>().unwrap(), want);
        let neg: Vec<f32> = want.iter().map(|x| -x).collect();
        assert_eq!(v.into_data().to_vec::<f32>().unwrap(), neg);
    }
}

/// Records block outputs; optionally scales attention outputs and zeroes feed-forward ones.
#[derive(Default)]
struct Probe {
    blocks: Vec<Tensor<B, 3>>,
    attention_scale: Option<f32>,
    zero_ffn: bool,
}

impl ForwardHooks<B> for Probe {
    fn attention_output(&mut self, _layer: usize, out: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.attention_scale {
            Some(s) => out.mul_scalar(s),
            None => out,
        }
    }

    fn ffn_output(&mut self, _layer: usize, out: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.zero_ffn { out.zeros_like() } else { out }
    }

    fn block_output(&mut self, _layer: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.blocks.push(x.clone());
        x
    }
}

fn hidden(model: &Transformer<B>, tokens: &[u32], hooks: Option<&mut Probe>) -> Vec<f32> {
    let options = ForwardOptions {
        hooks: hooks.map(|h| h as &mut dyn ForwardHooks<B>),
        ..Default::default()
    };
    to_vec(model.hidden(model.embed(ids(&[tokens]), 0), options))
}

#[test]
fn hooks_see_every_block_and_change_the_pass_as_the_weights_would() {
    let tokens = [3, 1, 4, 1, 5, 9];
    for (name, config) in configs() {
        let model = model(&config, 9);
        let plain = hidden(&model, &tokens, None);

        // Capture: one output per block; the final norm of the last is the hidden state.
        let mut probe = Probe::default();
        assert_eq!(hidden(&model, &tokens, Some(&mut probe)), plain, "{name}");
        assert_eq!(probe.blocks.len(), config.n_layers, "{name}");
        let last = probe.blocks.pop().unwrap();
        assert_close(name, &to_vec(model.final_norm.forward(last)), &plain);

        // Doubling every attention output = doubling every `o_proj` (weight and bias).
        let mut doubled = model.clone();
        for layer in doubled.layers.iter_mut() {
            let o = &mut layer.attn.o_proj;
            o.weight = Param::from_tensor(o.weight.val().mul_scalar(2.0));
            o.bias = o
                .bias
                .take()
                .map(|b| Param::from_tensor(b.val().mul_scalar(2.0)));
        }
        let mut probe = Probe {
            attention_scale: Some(2.0),
            ..Default::default()
        };
        let hooked = hidden(&model, &tokens, Some(&mut probe));
        assert_close(
            &format!("{name} attention x2"),
            &hooked,
            &hidden(&doubled, &tokens, None),
        );

        // Zeroing every feed-forward output = zero `down_proj` weights and biases.
        let mut no_ffn = model.clone();
        for layer in no_ffn.layers.iter_mut() {
            let down = &mut layer.mlp.as_mut().unwrap().down_proj;
            down.weight = Param::from_tensor(down.weight.val().zeros_like());
            down.bias = down
                .bias
                .take()
                .map(|b| Param::from_tensor(b.val().zeros_like()));
        }
        let mut probe = Probe {
            zero_ffn: true,
            ..Default::default()
        };
        let hooked = hidden(&model, &tokens, Some(&mut probe));
        assert_close(
            &format!("{name} no ffn"),
            &hooked,
            &hidden(&no_ffn, &tokens, None),
        );
    }
}
