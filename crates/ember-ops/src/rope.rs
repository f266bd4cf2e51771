//! Rotary position embeddings (RoPE) in the Hugging Face "rotate-half" layout.
//!
//! burn's `RotaryEncoding` rotates interleaved pairs `(x[2i], x[2i+1])`; Llama checkpoints
//! in Hugging Face format pair `x[i]` with `x[i + d/2]` instead, which is what this does.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Precomputed `cos`/`sin` tables, each `[max_seq, head_dim]`, with the two halves of
/// every row equal (the rotate-half layout).
#[derive(Module, Debug)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `0..max_seq` with frequencies `theta^(-2i/head_dim)`.
    /// Angles are computed in f64 and rounded once.
    pub fn new(head_dim: usize, max_seq: usize, theta: f64, device: &B::Device) -> Self {
        assert!(
            head_dim.is_multiple_of(2),
            "RoPE needs an even head dimension"
        );
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_seq * head_dim);
        let mut sin = Vec::with_capacity(max_seq * head_dim);
        for pos in 0..max_seq {
            let row: Vec<(f64, f64)> = (0..half)
                .map(|i| {
                    let inv_freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
                    (pos as f64 * inv_freq).sin_cos()
                })
                .collect();
            for _ in 0..2 {
                sin.extend(row.iter().map(|(s, _)| *s as f32));
                cos.extend(row.iter().map(|(_, c)| *c as f32));
            }
        }
        let shape = [max_seq, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Number of positions the tables cover.
    pub fn max_seq(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x`: `[batch, heads, seq, head_dim]` whose first row is position `start`.
    pub fn apply(&self, x: Tensor<B, 4>, start: usize) -> Tensor<B, 4> {
        let [_, _, seq, head_dim] = x.dims();
        let half = head_dim / 2;
        let cos = self.cos.clone().narrow(0, start, seq).unsqueeze::<4>();
        let sin = self.sin.clone().narrow(0, start, seq).unsqueeze::<4>();
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }
}
