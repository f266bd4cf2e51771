//! Attaching AdaLoRA adapters, the orthogonality penalty, and which ranks are alive.
//!
//! In `peft`, an adapted linear layer computes
//! `y = x·Wᵀ + b + drop(x)·(A⊙E)ᵀ·Bᵀ · lora_alpha / (ranknum + 1e-5)` with `A` (`lora_A`)
//! `[r, d_in]`, `E` (`lora_E`) `[r, 1]`, `B` (`lora_B`) `[d_out, r]` and `ranknum = r`. In
//! Ember's [`ember_nn::Adapter`]: `down = Aᵀ` `[d_in, r]`, `rank_scale = E` `[r]`,
//! `up = Bᵀ` `[r, d_out]`, `scaling = lora_alpha / (r + 1e-5)` (`r = init_r`, which
//! `peft` keeps as `ranknum` even for an adapter loaded at pruned ranks).
//!
//! A projection pruned to rank 0 (`peft` keeps it, with empty tensors) carries an adapter
//! whose parts are all `None`: burn has no zero-sized parameters.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::nn::{DropoutConfig, Initializer};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_nn::{Adapter, FusedBackend, Transformer};

use super::config::AdaLoraConfig;
use crate::attach::{PeftReport, attach, freeze_all_but, target_paths};
use crate::targets::PeftError;

/// Attaches an AdaLoRA adapter of rank `init_r` to every target projection of `model`
/// and freezes everything else, as `peft` initialises one: `E` zero (so training starts
/// from the base model), `A` and `B` normal with standard deviation 0.02. Parameter ids
/// are derived from paths. The trainable count is `peft`'s (`r·(d_in + d_out + 1)` per
/// projection; `ranknum` does not train). `Err` names the key at fault.
pub fn apply_adalora<B: FusedBackend>(
    mut model: Transformer<B>,
    config: &AdaLoraConfig,
    device: &B::Device,
) -> Result<(Transformer<B>, PeftReport), PeftError> {
    config.validate()?;
    let adapted = target_paths(&mut model, &config.targets, "peft.target_modules")?;
    let scaling = config.scaling();
    let r = config.init_r;
    let normal = Initializer::Normal {
        mean: 0.0,
        std: 0.02,
    };
    attach(&mut model, &adapted, |_, projection| {
        let (d_in, d_out) = projection.dims();
        Adapter {
            down: Some(normal.init([d_in, r], device)),
            up: Some(normal.init([r, d_out], device)),
            rank_scale: Some(Param::from_tensor(Tensor::zeros([r], device))),
            scaling,
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            ..Adapter::empty()
        }
    })?;
    Ok(freeze_all_but(model, adapted, |_| false))
}

/// One AdaLoRA adapter of a model.
pub(crate) struct AdaLoraParts<B: Backend> {
    pub(crate) path: String,
    pub(crate) d_in: usize,
    pub(crate) d_out: usize,
    /// `(down, rank_scale, up)`; `None` for an adapter pruned to rank 0.
    pub(crate) tensors: Option<AdaLoraTensors<B>>,
}

/// `down` `[d_in, r]`, `rank_scale` `[r]`, `up` `[r, d_out]`.
pub(crate) type AdaLoraTensors<B> = (
    Param<Tensor<B, 2>>,
    Param<Tensor<B, 1>>,
    Param<Tensor<B, 2>>,
);

impl<B: Backend> AdaLoraParts<B> {
    pub(crate) fn rank(&self) -> usize {
        self.tensors
            .as_ref()
            .map_or(0, |(down, _, _)| down.dims()[1])
    }
}

/// The AdaLoRA adapters of `model`, in model order: those with `down`, `rank_scale` and
/// `up` (and nothing else), and the empty ones (every part `None`), which stand for a
/// projection pruned to rank 0 (burn has no zero-sized parameters to hold it).
pub(crate) fn adalora_adapters<B: FusedBackend>(model: &Transformer<B>) -> Vec<AdaLoraParts<B>> {
    let mut model = model.clone();
    model
        .projections_mut()
        .into_iter()
        .filter_map(|(path, p)| {
            let (d_in, d_out) = p.dims();
            let a = p.adapter.as_ref()?;
            if a.input_scale.is_some() || a.output_scale.is_some() || a.magnitude.is_some() {
                return None;
            }
            let tensors = match (&a.down, &a.rank_scale, &a.up) {
                (Some(down), Some(e), Some(up)) => Some((down.clone(), e.clone(), up.clone())),
                (None, None, None) => None,
                _ => return None,
            };
            Some(AdaLoraParts {
                path,
                d_in,
                d_out,
                tensors,
            })
        })
        .collect()
}

/// `peft`'s orthogonality regulariser, which its `AdaLoraModel.forward` adds to the loss
/// times `orth_reg_weight`: the mean, over every `A` and every `B` of the adapted
/// projections, of `‖A·Aᵀ − I‖_F` and `‖Bᵀ·B − I‖_F` (the norm itself, not its square).
/// `[1]`; zero when `model` has no AdaLoRA adapter. A projection pruned to rank 0 counts
/// with a zero norm, as in `peft`.
pub fn orthogonal_penalty<B: FusedBackend>(model: &Transformer<B>) -> Tensor<B, 1> {
    let device = model.tok_embeddings.weight.val().device();
    let mut total: Option<Tensor<B, 1>> = None;
    let mut count = 0usize;
    for parts in adalora_adapters(model) {
        // Rank 0: two zero norms.
        count += 2;
        let Some((down, _, up)) = parts.tensors else {
            continue;
        };
        let (down, up) = (down.val(), up.val());
        // A·Aᵀ = downᵀ·down; Bᵀ·B = up·upᵀ.
        for cov in [
            down.clone().transpose().matmul(down),
            up.clone().matmul(up.transpose()),
        ] {
            let [r, _] = cov.dims();
            let norm = (cov - Tensor::eye(r, &device)).powi_scalar(2).sum().sqrt();
            total = Some(match total {
                Some(t) => t + norm,
                None => norm,
            });
        }
    }
    match total {
        Some(t) => t.div_scalar(count as f64),
        None => Tensor::zeros([1], &device),
    }
}

/// Which ranks of each AdaLoRA adapter hold a nonzero singular value (`rank_scale`), by
/// Ember path. After pruning this is the pattern the pruning left (masked values are
/// exactly zero) — but `E` also starts at zero, and a masked value trains again until the
/// next pruning: the pattern to save is [`crate::RankAllocator::rank_pattern`].
pub fn rank_pattern<B: FusedBackend>(model: &Transformer<B>) -> BTreeMap<String, Vec<bool>> {
    adalora_adapters(model)
        .into_iter()
        .map(|parts| {
            let e: Vec<f32> = match parts.tensors {
                Some((_, e, _)) => e
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .expect("float values"),
                None => Vec::new(),
            };
            (parts.path, e.iter().map(|&x| x != 0.0).collect())
        })
        .collect()
}
