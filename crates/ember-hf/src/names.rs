//! Which Hugging Face tensor holds each Ember parameter, and how it is laid out.
//!
//! One table per architecture, built by its family (`src/families/`), drives both
//! directions: import reads each Ember parameter from its entry, export writes each entry
//! from its parameters. Hugging Face `Linear` weights are `[out, in]` where burn's are
//! `[in, out]` (transposed); GPT-2's `Conv1D` weights are already `[in, out]`, and its
//! `c_attn` holds q, k and v side by side along the last dimension.

use ember_nn::TransformerConfig;

use crate::families::HfArch;

/// Where one Ember parameter comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Ember's dotted parameter path (`layers.0.attn.q_proj.weight`).
    pub ember: String,
    /// The Hugging Face tensor name.
    pub hf: String,
    /// The Hugging Face tensor is the transpose of Ember's (a 2-D `Linear` weight).
    pub transpose: bool,
    /// `(index, count)`: Ember's tensor is part `index` of `count` equal parts of the
    /// Hugging Face tensor along its last dimension (GPT-2's fused `c_attn`).
    pub part: Option<(usize, usize)>,
}

impl TensorEntry {
    pub(crate) fn new(ember: impl Into<String>, hf: impl Into<String>, transpose: bool) -> Self {
        Self {
            ember: ember.into(),
            hf: hf.into(),
            transpose,
            part: None,
        }
    }

    /// The Hugging Face tensor's shape, given the Ember parameter's.
    pub fn hf_shape(&self, ember_shape: &[usize]) -> Vec<usize> {
        let mut shape = ember_shape.to_vec();
        if self.transpose {
            shape.reverse();
        }
        if let (Some((_, count)), Some(last)) = (self.part, shape.last_mut()) {
            *last *= count;
        }
        shape
    }
}

/// Tensors a checkpoint may hold that are not parameters (buffers of older exports).
pub fn is_ignorable(name: &str) -> bool {
    name.ends_with(".attn.bias") && !name.contains("c_attn")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
}

/// Every parameter of an Ember model with `config`, as architecture `arch` stores it.
pub fn tensor_map(arch: HfArch, config: &TransformerConfig) -> Vec<TensorEntry> {
    arch.family().tensor_map(config)
}
