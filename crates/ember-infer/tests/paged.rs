//! The batched host pass over a paged KV cache against references that share none of its
//! code paths: each sequence alone through the batch-1 host decoder (contiguous cache,
//! matrix-vector kernels; f32, int8 and 4-bit weights), fed the same chunks; and burn's
//! forward pass with its contiguous cache. Sequences of different lengths are prefilled
//! in chunks and decoded together in 4-position blocks, one of them forked and one
//! sharing another's prefix.

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use ember_infer::{BlockTable, ContiguousKvCache, HostDecoder, HostWeights, PagedChunk, PagedKv};
use ember_nn::{ForwardOptions, MlpKind, Transformer, TransformerConfig};
use ember_ops::RopeScaling;

type B = Flex;

fn model(config: &TransformerConfig) -> Transformer<B> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 7);
    let mut config = config.clone();
    config.init_std = 0.2;
    Transformer::new(&config, &device).unwrap()
}

fn configs() -> Vec<(&'static str, TransformerConfig)> {
    let llama = TransformerConfig::llama(61, 64, 2, 8, 2, 96, 48);
    let mut gpt2 = TransformerConfig::gpt2(61, 48, 2, 4, 48);
    gpt2.mlp = MlpKind::GeluTanh;
    let mut dynamic = llama.clone();
    dynamic.rope_scaling = Some(RopeScaling::DynamicNtk {
        factor: 2.0,
        original_max_seq: 8,
    });
    vec![
        ("llama-gqa", llama),
        ("gpt2-d48", gpt2),
        ("dynamic-ntk", dynamic),
        (
            "mistral-window-5",
            TransformerConfig::mistral(61, 64, 2, 4, 2, 96, 48, 5),
        ),
    ]
}

fn sequence(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 7 + seed * 13) % 61).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff / scale <= tol,
        "{what}: max |Δ| {diff} (scale {scale})"
    );
}

/// Prefills three sequences in chunks of at most 4 tokens, all in the same passes, then
/// decodes 6 more tokens each in batched steps; a fourth sequence forks the first after
/// its prompt. Returns every logits row in the order produced, per sequence.
fn paged_run(host: &HostDecoder, prompts: &[Vec<u32>], steps: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let vocab = host.config().vocab_size;
    let mut kv = PagedKv::new(host.config(), 4, 64);
    let mut tables: Vec<BlockTable> = prompts.iter().map(|_| BlockTable::default()).collect();
    let mut fed = vec![0usize; prompts.len()];
    let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len() + 1];
    while fed.iter().zip(prompts).any(|(f, p)| *f < p.len()) {
        let live: Vec<usize> = (0..prompts.len())
            .filter(|&s| fed[s] < prompts[s].len())
            .collect();
        let pieces: Vec<&[u32]> = live
            .iter()
            .map(|&s| &prompts[s][fed[s]..(fed[s] + 4).min(prompts[s].len())])
            .collect();
        for (&s, piece) in live.iter().zip(&pieces) {
            kv.reserve(&mut tables[s], fed[s] + piece.len()).unwrap();
        }
        let mut chunks: Vec<PagedChunk> = Vec::new();
        let mut rest: &mut [BlockTable] = &mut tables;
        let mut base = 0;
        for (&s, piece) in live.iter().zip(&pieces) {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(s - base);
            let (table, tail) = tail.split_first_mut().unwrap();
            rest = tail;
            base = s + 1;
            chunks.push(PagedChunk {
                table,
                tokens: piece,
            });
        }
        let logits = host.forward_paged(&mut kv, &mut chunks);
        for (i, (&s, piece)) in live.iter().zip(&pieces).enumerate() {
            fed[s] += piece.len();
            out[s].push(logits[i * vocab..(i + 1) * vocab].to_vec());
        }
    }
    // The fork continues with the second sequence's steps, from the first's prompt.
    let fork = kv.fork(&tables[0]).unwrap();
    tables.push(fork);
    let mut all_steps = steps.to_vec();
    all_steps.push(steps[1].clone());
    for step in 0..all_steps[0].len() {
        let tokens: Vec<u32> = all_steps.iter().map(|s| s[step]).collect();
        for table in tables.iter_mut() {
            let len = table.len;
            kv.reserve(table, len + 1).unwrap();
        }
        let mut chunks: Vec<PagedChunk> = tables
            .iter_mut()
            .zip(&tokens)
            .map(|(table, t)| PagedChunk {
                table,
                tokens: std::slice::from_ref(t),
            })
            .collect();
        let logits = host.forward_paged(&mut kv, &mut chunks);
        for (s, row) in logits.chunks_exact(vocab).enumerate() {
            out[s].push(row.to_vec());
        }
    }
    out
}

/// The same chunks through the batch-1 host decoder, one sequence at a time.
fn host_alone(host: &HostDecoder, prompt: &[u32], steps: &[u32]) -> Vec<Vec<f32>> {
    let mut state = host.new_state();
    let mut out = Vec::new();
    for piece in prompt.chunks(4) {
        out.push(host.prefill(&mut state, piece).to_vec());
    }
    for &t in steps {
        out.push(host.step(&mut state, t).to_vec());
    }
    out
}

#[test]
fn batched_paged_passes_match_each_sequence_alone() {
    for (name, config) in configs() {
        let model = model(&config);
        for weights in [HostWeights::F32, HostWeights::Int8, HostWeights::Int4] {
            let host = HostDecoder::new(&model, weights).unwrap();
            let prompts = vec![sequence(1, 13), sequence(2, 5), sequence(3, 9)];
            let steps: Vec<Vec<u32>> = (0..3).map(|s| sequence(10 + s, 6)).collect();
            let got = paged_run(&host, &prompts, &steps);
            for s in 0..3 {
                let want = host_alone(&host, &prompts[s], &steps[s]);
                assert_eq!(got[s].len(), want.len());
                for (i, (g, w)) in got[s].iter().zip(&want).enumerate() {
                    assert_close(&format!("{name} {weights:?} seq {s} pass {i}"), g, w, 1e-5);
                }
            }
            // The fork: the first prompt, then the second sequence's steps.
            let want = host_alone(&host, &prompts[0], &steps[1]);
            let prompt_passes = prompts[0].len().div_ceil(4);
            for (i, (g, w)) in got[3].iter().zip(&want[prompt_passes..]).enumerate() {
                assert_close(&format!("{name} {weights:?} fork step {i}"), g, w, 1e-5);
            }
        }
    }
}

#[test]
fn the_paged_cache_gives_the_logits_of_burns_contiguous_cache() {
    for (name, config) in configs() {
        if config.rope_scaling.is_some() {
            // Token-by-token burn passes see other dynamic-NTK lengths than chunks do.
            continue;
        }
        let model = model(&config);
        let host = HostDecoder::new(&model, HostWeights::F32).unwrap();
        let tokens = sequence(5, 30);
        let mut kv = PagedKv::new(&config, 4, 16);
        let mut table = BlockTable::default();
        let mut cache = ContiguousKvCache::<B>::new(config.n_layers);
        for &t in &tokens {
            let len = table.len;
            kv.reserve(&mut table, len + 1).unwrap();
            let got = host.forward_paged(
                &mut kv,
                &mut [PagedChunk {
                    table: &mut table,
                    tokens: &[t],
                }],
            );
            let input = Tensor::<B, 2, Int>::from_data(
                TensorData::new(vec![i64::from(t)], [1, 1]),
                &Default::default(),
            );
            let options = ForwardOptions {
                cache: Some(&mut cache),
                ..Default::default()
            };
            let want: Vec<f32> = model.forward(input, options).into_data().to_vec().unwrap();
            assert_close(&format!("{name} pos {}", table.len), &got, &want, 1e-4);
        }
    }
}

#[test]
fn a_shared_prefix_gives_the_logits_of_computing_it_again() {
    let config = TransformerConfig::llama(61, 64, 2, 8, 2, 96, 48);
    let host = HostDecoder::new(&model(&config), HostWeights::F32).unwrap();
    let mut kv = PagedKv::new(&config, 4, 32);
    let first = sequence(4, 14);
    let mut a = kv.share_prefix(0, &first);
    kv.reserve(&mut a, first.len()).unwrap();
    host.forward_paged(
        &mut kv,
        &mut [PagedChunk {
            table: &mut a,
            tokens: &first,
        }],
    );
    kv.index_blocks(0, &mut a, &first);
    let mut second = first[..10].to_vec();
    second.extend(sequence(9, 5));
    let mut b = kv.share_prefix(0, &second);
    assert_eq!(b.len, 8, "two full blocks of the common 10 tokens");
    let blocks_used = kv.total_blocks() - kv.free_blocks();
    kv.reserve(&mut b, second.len()).unwrap();
    let len = b.len;
    let got = host.forward_paged(
        &mut kv,
        &mut [PagedChunk {
            table: &mut b,
            tokens: &second[len..],
        }],
    );
    assert_eq!(kv.total_blocks() - kv.free_blocks(), blocks_used + 2);
    let mut state = host.new_state();
    let want = host.prefill(&mut state, &second).to_vec();
    assert_close("shared prefix", &got, &want, 1e-5);
}
