//! Building a [`HostDecoder`] from a burn model: weights copied once, projections
//! transposed to `[out, in]` rows and stored as f32 or int8.

use std::collections::HashMap;

use burn::tensor::DType;
use ember_nn::{
    FusedBackend, MlpKind, NormKind, NormPlacement, PositionKind, Transformer, TransformerConfig,
    param_values,
};

use super::{HostDecoder, HostWeights, Layer, Linear, Matrix, Norm};

/// burn's `[d_in, d_out]` row-major as `[d_out, d_in]` row-major (rows of the result are
/// contiguous dot products).
fn transpose(w: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for i in 0..d_in {
        for o in 0..d_out {
            t[o * d_in + i] = w[i * d_out + o];
        }
    }
    t
}

/// `[rows, cols]` values stored as `weights` asks; `Err` names the matrix that int8 cannot
/// represent (never an f32 fallback).
fn matrix(
    name: &str,
    rows: usize,
    cols: usize,
    data: Vec<f32>,
    weights: HostWeights,
) -> Result<Matrix, String> {
    match weights {
        HostWeights::F32 => Ok(Matrix::f32(rows, cols, data)),
        HostWeights::Int8 => Matrix::int8(rows, cols, data).map_err(|e| format!("`{name}`: {e}")),
        HostWeights::Int4 => Matrix::int4(rows, cols, data).map_err(|e| format!("`{name}`: {e}")),
    }
}

impl HostDecoder {
    /// Copies `model`'s weights (transposing projections to `[out, in]` rows); with
    /// [`HostWeights::Int8`] every projection and the LM head is int8, whatever its
    /// width. `Err` names the option the host decoder does not implement, or the matrix
    /// int8 cannot represent (a non-finite weight).
    pub fn new<B: FusedBackend>(
        model: &Transformer<B>,
        weights: HostWeights,
    ) -> Result<Self, String> {
        let config = model.config().clone();
        check(&config)?;
        let mut params = plain_weights(model)?;
        let mut take = |path: &str| {
            params
                .remove(path)
                .ok_or_else(|| format!("the model has no parameter `{path}`"))
        };
        let mut linear = |prefix: String| -> Result<Linear, String> {
            let name = format!("{prefix}.weight");
            let (shape, w) = take(&name)?;
            let (d_in, d_out) = (shape[0], shape[1]);
            let bias = take(&format!("{prefix}.bias")).ok().map(|(_, b)| b);
            Ok(Linear {
                weight: matrix(&name, d_out, d_in, transpose(&w, d_in, d_out), weights)?,
                bias,
            })
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        let eps = config.norm_eps as f32;
        let rms = config.norm == NormKind::RmsNorm;
        let unset = || Norm {
            gamma: Vec::new(),
            beta: None,
            rms,
            eps,
        };
        for i in 0..config.n_layers {
            let p = format!("layers.{i}");
            let gated = matches!(config.mlp, MlpKind::SwiGlu | MlpKind::GeGlu);
            layers.push(Layer {
                attn_norm: unset(),
                q: linear(format!("{p}.attn.q_proj"))?,
                k: linear(format!("{p}.attn.k_proj"))?,
                v: linear(format!("{p}.attn.v_proj"))?,
                o: linear(format!("{p}.attn.o_proj"))?,
                mlp_norm: unset(),
                gate: if gated {
                    Some(linear(format!("{p}.mlp.gate_proj"))?)
                } else {
                    None
                },
                up: linear(format!("{p}.mlp.up_proj"))?,
                down: linear(format!("{p}.mlp.down_proj"))?,
            });
        }
        let mut norm = |prefix: &str| -> Result<Norm, String> {
            Ok(Norm {
                gamma: take(&format!("{prefix}.gamma"))?.1,
                beta: take(&format!("{prefix}.beta")).ok().map(|(_, b)| b),
                rms,
                eps,
            })
        };
        for (i, layer) in layers.iter_mut().enumerate() {
            layer.attn_norm = norm(&format!("layers.{i}.attn_norm"))?;
            layer.mlp_norm = norm(&format!("layers.{i}.mlp_norm"))?;
        }
        let final_norm = norm("final_norm")?;
        let (_, tok_embeddings) = take("tok_embeddings.weight")?;
        let pos_embeddings = take("pos_embeddings.weight").ok().map(|(_, p)| p);
        let (vocab, d) = (config.vocab_size, config.d_model);
        // `[vocab, d_model]`; the lookup table stays f32 either way.
        let lm_head = match take("lm_head.weight") {
            Ok((_, w)) => matrix("lm_head.weight", vocab, d, transpose(&w, d, vocab), weights)?,
            Err(_) => matrix(
                "tok_embeddings.weight",
                vocab,
                d,
                tok_embeddings.clone(),
                weights,
            )?,
        };
        let rope = (config.position == PositionKind::Rope).then(|| config.rope_config());
        Ok(Self {
            inv_freq: rope.map_or((Vec::new(), 1.0), |r| r.inv_freq(config.max_seq_len)),
            rope,
            config,
            tok_embeddings,
            pos_embeddings,
            layers,
            final_norm,
            lm_head,
        })
    }
}

/// `Err` names the first option of `c` the host decoder does not implement.
/// A parameter's shape and values on the host.
type HostTensor = (Vec<usize>, Vec<f32>);

/// Every parameter as `(shape, f32 values)` by path; `Err` names a projection with an
/// adapter or a burn-quantized weight, which the host kernels do not read.
fn plain_weights<B: FusedBackend>(
    model: &Transformer<B>,
) -> Result<HashMap<String, HostTensor>, String> {
    let mut out = HashMap::new();
    for (path, data) in param_values(model) {
        if let Some(at) = path.find(".adapter.") {
            return Err(format!(
                "the host decoder does not implement adapters (`{}` has one): merge it into \
                 the weight first",
                &path[..at]
            ));
        }
        if let DType::QFloat(_) = data.dtype {
            return Err(format!(
                "the host decoder does not read burn-quantized weights (`{path}`); its own \
                 int8 form comes from the f32 model"
            ));
        }
        let shape = data.shape.to_vec();
        let values = data
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| format!("`{path}`: {e:?}"))?;
        out.insert(path, (shape, values));
    }
    Ok(out)
}

pub(super) fn check(c: &TransformerConfig) -> Result<(), String> {
    let unsupported = |what: String| Err(format!("the host decoder does not implement {what}"));
    if c.moe.is_some() {
        return unsupported("Mixture-of-Experts layers".into());
    }
    if c.qk_norm {
        return unsupported("QK-norm".into());
    }
    if c.attn_softcap.is_some() {
        return unsupported("attention soft-capping".into());
    }
    if c.norm_placement != NormPlacement::Pre || c.parallel_residual {
        return unsupported("post/sandwich norms or a parallel residual".into());
    }
    if c.norm == NormKind::GroupNorm {
        return unsupported("GroupNorm".into());
    }
    if matches!(c.position, PositionKind::Alibi | PositionKind::Sinusoidal) {
        return unsupported(format!("{:?} positions", c.position));
    }
    Ok(())
}
