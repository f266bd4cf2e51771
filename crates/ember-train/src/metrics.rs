//! One JSON object per logged step, appended to `metrics.jsonl`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub train_loss: f64,
    /// Mean validation loss, on the steps that evaluated.
    pub val_loss: Option<f64>,
    /// Contrastive runs, on the steps that evaluated: the share of held-out anchors whose
    /// most similar held-out positive is their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieval_accuracy: Option<f64>,
    pub lr: f64,
    /// Global gradient norm before clipping (`null` in JSON when not finite: a step
    /// skipped under loss scaling).
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Training tokens per second over this step (evaluation excluded).
    pub tokens_per_s: f64,
    /// Duration of this optimizer step in milliseconds (evaluation excluded).
    pub step_ms: f64,
    /// Wall-clock seconds since the run (or the original run, when resumed) began.
    pub elapsed_s: f64,
    /// Shards each micro-batch ran as (`train.batch_shards`, with 0 resolved).
    #[serde(default)]
    pub batch_shards: usize,
    /// Data-parallel runs: the gradient all-reduce's time on rank 0, ms (flattening
    /// included; waiting for slower ranks not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allreduce_ms: Option<f64>,
    /// MoE models: the Switch load-balancing loss of this step, summed over layers
    /// (unweighted; `train_loss` is the language-model loss alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_balance_loss: Option<f64>,
    /// MoE models: the router z-loss of this step, summed over layers (unweighted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_z_loss: Option<f64>,
    /// MoE models: share of routed assignments per expert since the previous record,
    /// all layers together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert_load: Option<Vec<f64>>,
    /// MoE models: assignments dropped by the capacity limit since the previous record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_dropped: Option<usize>,
    /// `train.precision = "f16-mixed"`: the loss scale this step ran with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// The step's gradients were not finite under loss scaling: the optimizer skipped it
    /// (and the scale was halved).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped_step: bool,
    /// The objective's own named metrics of this step (row-weighted means over its
    /// micro-batches; see [`crate::objective::ObjectiveOutput::metrics`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub objective: BTreeMap<String, f64>,
    /// On evaluating steps, the validation loss of each step hook's own weights (such as
    /// `ema`), by hook name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hook_val_loss: BTreeMap<String, f64>,
    /// `train.capture`: per captured module (`layers.N.attn`, `layers.N.mlp`,
    /// `layers.N`), its output's statistics on the step's first micro-batch and its
    /// parameters' gradient norm (before clipping).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capture: BTreeMap<String, CapturedModule>,
}

/// One captured module of a logged step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedModule {
    #[serde(flatten)]
    pub stats: ember_nn::ActivationStats,
    /// The L2 norm of the module's parameters' gradients (`None`: it has none, e.g. a
    /// frozen module).
    pub grad_norm: Option<f64>,
    /// RMS of the loss's gradient with respect to the module's output, on one shard of
    /// the step's first micro-batch.
    #[serde(default)]
    pub activation_grad_rms: Option<f64>,
    /// Max |·| of that gradient.
    #[serde(default)]
    pub activation_grad_max_abs: Option<f64>,
}

/// A number, or NaN where JSON holds `null` (serde_json writes non-finite floats so).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}
