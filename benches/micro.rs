//! criterion micro-benchmarks, each Ember kernel beside the reference it replaces, at the
//! shapes of the `nanogpt-cpu` (d 128, 4 heads, batch 12 × 64), `gpt-wide` (d 384, 6 heads,
//! batch 8 × 256) and stories15M (d 288, vocab 32000) benchmarks, on the Flex backend.
//!
//! `cargo xtask bench --micro` runs them and prints one summary line; or
//! `cargo bench -p ember-benches --bench micro -- <filter>`.

use burn::tensor::activation::softmax;
use burn::tensor::{Distribution, Int, Tensor, TensorData, TensorPrimitive};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ember_infer::host::Matrix;
use ember_infer::{Sampler, SamplingConfig};
use ember_nn::{Mlp, MlpKind, TransformerConfig};
use ember_ops::fused::composed;
use ember_ops::kernels::flex::bf16_gemm::{self, MatRef};
use ember_ops::{RopeConfig, RopeTables};
use ember_train::{CrossEntropy, LmLoss};

type B = burn_flex::Flex;

fn randn<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn prim<const D: usize>(t: Tensor<B, D>) -> burn::tensor::ops::FloatTensor<B> {
    t.into_primitive().tensor()
}

fn wrap<const D: usize>(p: burn::tensor::ops::FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Forces a lazily evaluated result.
fn host<const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.to_data().to_vec().unwrap()
}

fn sync<const D: usize>(t: Tensor<B, D>) {
    std::hint::black_box(t.into_data());
}

fn norms(c: &mut Criterion) {
    let mut group = c.benchmark_group("norm");
    for (name, rows, d) in [("nanogpt", 768, 128), ("stories15m", 256, 288)] {
        let x = randn([rows, d]);
        let w = randn([d]);
        let b = randn([d]);
        group.bench_function(BenchmarkId::new("rms_fused", name), |bench| {
            bench.iter(|| sync(ember_ops::fused::rms_norm(x.clone(), w.clone(), 1e-5)))
        });
        group.bench_function(BenchmarkId::new("rms_composed", name), |bench| {
            bench.iter(|| {
                sync::<2>(wrap(composed::rms_norm::<B>(
                    prim(x.clone()),
                    prim(w.clone()),
                    1e-5,
                )))
            })
        });
        group.bench_function(BenchmarkId::new("layer_fused", name), |bench| {
            bench.iter(|| {
                sync(ember_ops::fused::layer_norm(
                    x.clone(),
                    w.clone(),
                    Some(b.clone()),
                    1e-5,
                ))
            })
        });
        group.bench_function(BenchmarkId::new("layer_composed", name), |bench| {
            bench.iter(|| {
                sync::<2>(wrap(composed::layer_norm::<B>(
                    prim(x.clone()),
                    prim(w.clone()),
                    Some(prim(b.clone())),
                    1e-5,
                )))
            })
        });
    }
    group.finish();
}

fn attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    // Prefill: a whole causal sequence; decode: one query over a 255-position cache.
    for (name, heads, seq_q, seq_kv, hd) in [
        ("prefill_nanogpt", 4, 64, 64, 32),
        ("prefill_wide", 6, 256, 256, 64),
        ("decode_stories15m", 6, 1, 256, 48),
    ] {
        let batch = if name == "prefill_nanogpt" { 12 } else { 1 };
        let q = randn([batch, heads, seq_q, hd]);
        let k = randn([batch, heads, seq_kv, hd]);
        let v = randn([batch, heads, seq_kv, hd]);
        group.bench_function(BenchmarkId::new("fused", name), |bench| {
            bench.iter(|| {
                sync(ember_ops::fused::attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    true,
                ))
            })
        });
        group.bench_function(BenchmarkId::new("composed", name), |bench| {
            bench.iter(|| {
                sync::<4>(wrap(composed::attention::<B>(
                    prim(q.clone()),
                    prim(k.clone()),
                    prim(v.clone()),
                    true,
                )))
            })
        });
    }
    group.finish();
}

fn rope(c: &mut Criterion) {
    let mut group = c.benchmark_group("rope");
    let tables =
        RopeTables::<B>::with_config(RopeConfig::new(48, 10_000.0), 256, &Default::default());
    let x = randn([1, 256, 6, 48]);
    group.bench_function(BenchmarkId::new("fused", "stories15m"), |bench| {
        bench.iter(|| sync(tables.apply_seq_major(x.clone(), 0)))
    });
    let (cos, sin) = {
        let (c, s) = ember_ops::rope::table_rows(&RopeConfig::new(48, 10_000.0), 0..256, 256);
        let t = |v: Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(v, [256, 48]), &Default::default())
        };
        (t(c), t(s))
    };
    group.bench_function(BenchmarkId::new("composed", "stories15m"), |bench| {
        bench.iter(|| {
            sync::<4>(wrap(composed::rope::<B>(
                prim(x.clone()),
                prim(cos.clone()),
                prim(sin.clone()),
                false,
                false,
            )))
        })
    });
    let host = RopeConfig::new(48, 10_000.0);
    group.bench_function("host_table_row", |bench| {
        bench.iter(|| std::hint::black_box(ember_ops::rope::table_rows(&host, 100..101, 101)))
    });
    group.finish();
}

fn swiglu(c: &mut Criterion) {
    let mut group = c.benchmark_group("swiglu");
    let config = TransformerConfig::llama(32000, 288, 1, 6, 6, 768, 256);
    let init = ember_nn::init::Init::new(&config);
    let mlp = Mlp::<B>::new(MlpKind::SwiGlu, 288, 768, false, &init, &Default::default());
    let x = randn([1, 256, 288]);
    group.bench_function("mlp_stories15m_256_tokens", |bench| {
        bench.iter(|| sync(mlp.forward(x.clone())))
    });
    group.finish();
}

fn cross_entropy(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross_entropy");
    let device = Default::default();
    for (name, rows, vocab) in [("nanogpt", 768, 65), ("stories15m", 256, 32000)] {
        let logits = randn([1, rows, vocab]);
        let targets = Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                (0..rows as i64)
                    .map(|i| i % vocab as i64)
                    .collect::<Vec<_>>(),
                [1, rows],
            ),
            &device,
        );
        let loss = CrossEntropy::<B>::new(None, &device);
        group.bench_function(BenchmarkId::new("burn_loss", name), |bench| {
            bench.iter(|| sync(loss.loss(logits.clone(), targets.clone())))
        });
        group.bench_function(BenchmarkId::new("softmax_only", name), |bench| {
            bench.iter(|| sync(softmax(logits.clone(), 2)))
        });
    }
    group.finish();
}

fn sampling(c: &mut Criterion) {
    let mut group = c.benchmark_group("sampling");
    let logits: Vec<f32> = (0..32000)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    for (name, config) in [
        ("greedy", SamplingConfig::greedy()),
        (
            "top_k_50",
            SamplingConfig {
                temperature: 0.8,
                top_k: Some(50),
                top_p: None,
                min_p: None,
                seed: 1,
            },
        ),
        (
            "top_p_0.9",
            SamplingConfig {
                temperature: 0.8,
                top_k: None,
                top_p: Some(0.9),
                min_p: None,
                seed: 1,
            },
        ),
    ] {
        let mut sampler = Sampler::new(config);
        group.bench_function(BenchmarkId::new("vocab_32000", name), |bench| {
            bench.iter(|| std::hint::black_box(sampler.sample(&logits)))
        });
    }
    group.finish();
}

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    for (name, m, k, n) in [
        ("nanogpt_qkv_768x128x384", 768, 128, 384),
        ("nanogpt_mlp_768x128x512", 768, 128, 512),
        ("wide_qkv_2048x384x1152", 2048, 384, 1152),
        ("wide_mlp_2048x384x1536", 2048, 384, 1536),
        ("wide_head_2048x384x65", 2048, 384, 65),
    ] {
        let a = randn([m, k]);
        let b = randn([k, n]);
        group.bench_function(BenchmarkId::new("flex", name), |bench| {
            bench.iter(|| sync(a.clone().matmul(b.clone())))
        });
        if bf16_gemm::available() {
            // The three products of a linear layer's training step: forward `x·W`, input
            // gradient `dy·Wᵀ` and weight gradient `xᵀ·dy`, on transposed views as the
            // backward pass passes them.
            let (a_host, b_host) = (host(&a), host(&b));
            let mut out = vec![0f32; m * n];
            // A matrix of leading dimension `ld`, read as stored or transposed.
            let row_major = |data, ld: usize| MatRef {
                data,
                offset: 0,
                row_stride: ld as isize,
                col_stride: 1,
            };
            let transposed = |data, ld: usize| MatRef {
                data,
                offset: 0,
                row_stride: 1,
                col_stride: ld as isize,
            };
            let cases = [
                ("bf16_nn", row_major(&a_host, k), row_major(&b_host, n)),
                ("bf16_tn", transposed(&a_host, m), row_major(&b_host, n)),
                ("bf16_nt", row_major(&a_host, k), transposed(&b_host, k)),
            ];
            for (label, lhs, rhs) in cases {
                group.bench_function(BenchmarkId::new(label, name), |bench| {
                    bench.iter(|| {
                        bf16_gemm::gemm(m, n, k, lhs, rhs, &mut out);
                        std::hint::black_box(&out);
                    })
                });
            }
        }
    }
    // Batch-1 decoding: the classifier of stories15M.
    let w: Vec<f32> = (0..32000 * 288)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let x: Vec<f32> = (0..288).map(|i| (i as f32).sin()).collect();
    let mut y = vec![0f32; 32000];
    for (name, quantize) in [("host_f32", false), ("host_int8", true)] {
        let m = Matrix::new(32000, 288, w.clone(), quantize);
        group.bench_function(BenchmarkId::new(name, "matvec_32000x288"), |bench| {
            bench.iter(|| {
                m.matvec(&x, &mut y);
                std::hint::black_box(&y);
            })
        });
    }
    let wt = Tensor::<B, 2>::from_data(
        TensorData::new(w.clone(), [32000, 288]),
        &Default::default(),
    )
    .transpose();
    let xt = Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [1, 288]), &Default::default());
    group.bench_function(BenchmarkId::new("flex", "matvec_32000x288"), |bench| {
        bench.iter(|| sync(xt.clone().matmul(wt.clone())))
    });
    group.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = norms, attention, rope, swiglu, cross_entropy, sampling, matmul
}
criterion_main!(micro);
