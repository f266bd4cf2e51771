//! Score modifiers: functions applied to the scaled attention scores before masking.
//!
//! A [`ScoreMod`] transforms a tile of scores `[batch, n_heads, q, kv]` given the tile's
//! indices ([`ScoreIndex`]). It is written in tensor ops, so it runs on every backend and
//! autodiff differentiates through it.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Broadcastable index tensors of one score tile (as `f32`), for score modifiers.
#[derive(Debug, Clone)]
pub struct ScoreIndex<B: Backend> {
    /// `[batch, 1, 1, 1]`: the sequence index.
    pub batch: Tensor<B, 4>,
    /// `[1, n_heads, 1, 1]`: the query head.
    pub head: Tensor<B, 4>,
    /// `[1, 1, q, 1]`: absolute query positions (see [`super::MaskMod`]).
    pub q_idx: Tensor<B, 4>,
    /// `[1, 1, 1, kv]`: key positions.
    pub kv_idx: Tensor<B, 4>,
}

impl<B: Backend> ScoreIndex<B> {
    /// Indices of the tile `q × kv` for `batch` sequences and `n_heads` heads.
    pub fn new(
        batch: usize,
        n_heads: usize,
        q: Range<usize>,
        kv: Range<usize>,
        device: &B::Device,
    ) -> Self {
        let axis = |values: Range<usize>, shape: [usize; 4]| {
            let values: Vec<f32> = values.map(|v| v as f32).collect();
            Tensor::from_data(TensorData::new(values, shape), device)
        };
        Self {
            batch: axis(0..batch, [batch, 1, 1, 1]),
            head: axis(0..n_heads, [1, n_heads, 1, 1]),
            q_idx: axis(q.clone(), [1, 1, q.len(), 1]),
            kv_idx: axis(kv.clone(), [1, 1, 1, kv.len()]),
        }
    }
}

/// A user score function `(scores [batch, heads, q, kv], indices) -> scores`.
pub type ScoreFn<B> = dyn Fn(Tensor<B, 4>, &ScoreIndex<B>) -> Tensor<B, 4> + Send + Sync;

/// How the scaled scores are modified before masking and softmax.
#[derive(Clone)]
pub enum ScoreMod<B: Backend> {
    /// ALiBi: adds `-slope[head] · |q_idx - kv_idx|` (see [`crate::alibi::alibi_slopes`]).
    Alibi(Vec<f32>),
    /// Tanh soft-capping (Gemma 2): `cap · tanh(score / cap)`.
    SoftCap(f64),
    /// A user function of the scores and their indices.
    Custom(Arc<ScoreFn<B>>),
    /// Applies each modifier in turn; the empty chain leaves the scores unchanged.
    Chain(Vec<ScoreMod<B>>),
}

impl<B: Backend> fmt::Debug for ScoreMod<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScoreMod::Alibi(slopes) => write!(f, "Alibi({} heads)", slopes.len()),
            ScoreMod::SoftCap(cap) => write!(f, "SoftCap({cap})"),
            ScoreMod::Custom(_) => write!(f, "Custom"),
            ScoreMod::Chain(mods) => f.debug_list().entries(mods).finish(),
        }
    }
}

/// The score modifiers burn's fused `attention` op expresses: soft-capping of the raw
/// scores, then an additive bias.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedScoreMod {
    pub softcap: Option<f64>,
    pub alibi: Option<Vec<f32>>,
}

impl<B: Backend> ScoreMod<B> {
    /// The identity: scores pass unchanged.
    pub fn none() -> Self {
        ScoreMod::Chain(Vec::new())
    }

    /// A user function of the scores and their indices.
    pub fn custom(
        f: impl Fn(Tensor<B, 4>, &ScoreIndex<B>) -> Tensor<B, 4> + Send + Sync + 'static,
    ) -> Self {
        ScoreMod::Custom(Arc::new(f))
    }

    /// `self`, then `next`.
    pub fn then(self, next: ScoreMod<B>) -> Self {
        let mut mods = self.flatten();
        mods.extend(next.flatten());
        ScoreMod::Chain(mods)
    }

    fn flatten(self) -> Vec<ScoreMod<B>> {
        match self {
            ScoreMod::Chain(mods) => mods.into_iter().flat_map(ScoreMod::flatten).collect(),
            other => vec![other],
        }
    }

    /// Whether this leaves every score unchanged.
    pub fn is_identity(&self) -> bool {
        match self {
            ScoreMod::Chain(mods) => mods.iter().all(ScoreMod::is_identity),
            _ => false,
        }
    }

    /// Applies the modifier to a tile of scores `[batch, n_heads, q, kv]`.
    pub fn apply(&self, scores: Tensor<B, 4>, index: &ScoreIndex<B>) -> Tensor<B, 4> {
        match self {
            ScoreMod::Alibi(slopes) => scores + alibi_bias(slopes, index),
            ScoreMod::SoftCap(cap) => scores.div_scalar(*cap).tanh().mul_scalar(*cap),
            ScoreMod::Custom(f) => f(scores, index),
            ScoreMod::Chain(mods) => mods.iter().fold(scores, |s, m| m.apply(s, index)),
        }
    }

    /// The form burn's fused op takes, when the chain is soft-capping and/or ALiBi in that
    /// order (the op applies the cap to raw scores and adds the bias after masking).
    pub fn fused_form(&self) -> Option<FusedScoreMod> {
        let mut form = FusedScoreMod {
            softcap: None,
            alibi: None,
        };
        for m in self.clone().flatten() {
            match m {
                ScoreMod::SoftCap(cap) if form.softcap.is_none() && form.alibi.is_none() => {
                    form.softcap = Some(cap)
                }
                ScoreMod::Alibi(slopes) if form.alibi.is_none() => form.alibi = Some(slopes),
                _ => return None,
            }
        }
        Some(form)
    }

    /// Checks the modifier against the attention's head count.
    pub fn check(&self, n_heads: usize) -> Result<(), String> {
        match self {
            ScoreMod::Alibi(slopes) if slopes.len() != n_heads => Err(format!(
                "ALiBi has {} slopes for {n_heads} heads",
                slopes.len()
            )),
            ScoreMod::SoftCap(cap) if !(*cap > 0.0 && cap.is_finite()) => {
                Err(format!("soft-cap must be positive, got {cap}"))
            }
            ScoreMod::Chain(mods) => mods.iter().try_for_each(|m| m.check(n_heads)),
            _ => Ok(()),
        }
    }
}

/// `-slope[head] · |q_idx - kv_idx|`: `[1, n_heads, q, kv]`.
pub fn alibi_bias<B: Backend>(slopes: &[f32], index: &ScoreIndex<B>) -> Tensor<B, 4> {
    let device = index.q_idx.device();
    let slopes = Tensor::<B, 4>::from_data(
        TensorData::new(slopes.to_vec(), [1, slopes.len(), 1, 1]),
        &device,
    );
    let distance = (index.q_idx.clone() - index.kv_idx.clone()).abs();
    distance * slopes.neg()
}
