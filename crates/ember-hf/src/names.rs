//! Which Hugging Face tensor holds each Ember parameter, and how it is laid out.
//!
//! One table per architecture drives both directions: import reads each Ember parameter
//! from its entry, export writes each entry from its parameters. Hugging Face `Linear`
//! weights are `[out, in]` where burn's are `[in, out]` (transposed); GPT-2's `Conv1D`
//! weights are already `[in, out]`, and its `c_attn` holds q, k and v side by side along
//! the last dimension.

use ember_nn::TransformerConfig;

use crate::config::HfArch;

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
    fn new(ember: impl Into<String>, hf: impl Into<String>, transpose: bool) -> Self {
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
    match arch {
        HfArch::Gpt2 => gpt2_map(config),
        _ => llama_map(config),
    }
}

fn llama_map(config: &TransformerConfig) -> Vec<TensorEntry> {
    let mut map = vec![TensorEntry::new(
        "tok_embeddings.weight",
        "model.embed_tokens.weight",
        false,
    )];
    for i in 0..config.n_layers {
        let (ember, hf) = (format!("layers.{i}"), format!("model.layers.{i}"));
        map.push(TensorEntry::new(
            format!("{ember}.attn_norm.gamma"),
            format!("{hf}.input_layernorm.weight"),
            false,
        ));
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            map.push(TensorEntry::new(
                format!("{ember}.attn.{proj}.weight"),
                format!("{hf}.self_attn.{proj}.weight"),
                true,
            ));
            if config.qkv_bias() && proj != "o_proj" {
                map.push(TensorEntry::new(
                    format!("{ember}.attn.{proj}.bias"),
                    format!("{hf}.self_attn.{proj}.bias"),
                    false,
                ));
            }
        }
        map.push(TensorEntry::new(
            format!("{ember}.mlp_norm.gamma"),
            format!("{hf}.post_attention_layernorm.weight"),
            false,
        ));
        match &config.moe {
            None => {
                for proj in ["gate_proj", "up_proj", "down_proj"] {
                    map.push(TensorEntry::new(
                        format!("{ember}.mlp.{proj}.weight"),
                        format!("{hf}.mlp.{proj}.weight"),
                        true,
                    ));
                }
            }
            Some(moe) => {
                let hf_moe = format!("{hf}.block_sparse_moe");
                map.push(TensorEntry::new(
                    format!("{ember}.moe.router.weight"),
                    format!("{hf_moe}.gate.weight"),
                    true,
                ));
                for e in 0..moe.n_experts {
                    for (proj, w) in [("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")] {
                        map.push(TensorEntry::new(
                            format!("{ember}.moe.experts.{e}.{proj}.weight"),
                            format!("{hf_moe}.experts.{e}.{w}.weight"),
                            true,
                        ));
                    }
                }
            }
        }
    }
    map.push(TensorEntry::new(
        "final_norm.gamma",
        "model.norm.weight",
        false,
    ));
    if !config.tie_embeddings {
        map.push(TensorEntry::new("lm_head.weight", "lm_head.weight", true));
    }
    map
}

fn gpt2_map(config: &TransformerConfig) -> Vec<TensorEntry> {
    let mut map = vec![
        TensorEntry::new("tok_embeddings.weight", "transformer.wte.weight", false),
        TensorEntry::new("pos_embeddings.weight", "transformer.wpe.weight", false),
    ];
    let norm = |map: &mut Vec<TensorEntry>, ember: String, hf: String| {
        map.push(TensorEntry::new(
            format!("{ember}.gamma"),
            format!("{hf}.weight"),
            false,
        ));
        map.push(TensorEntry::new(
            format!("{ember}.beta"),
            format!("{hf}.bias"),
            false,
        ));
    };
    let linear = |map: &mut Vec<TensorEntry>, ember: String, hf: String| {
        for p in ["weight", "bias"] {
            map.push(TensorEntry::new(
                format!("{ember}.{p}"),
                format!("{hf}.{p}"),
                false,
            ));
        }
    };
    for i in 0..config.n_layers {
        let (ember, hf) = (format!("layers.{i}"), format!("transformer.h.{i}"));
        norm(&mut map, format!("{ember}.attn_norm"), format!("{hf}.ln_1"));
        for (index, proj) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
            for p in ["weight", "bias"] {
                map.push(TensorEntry {
                    part: Some((index, 3)),
                    ..TensorEntry::new(
                        format!("{ember}.attn.{proj}.{p}"),
                        format!("{hf}.attn.c_attn.{p}"),
                        false,
                    )
                });
            }
        }
        linear(
            &mut map,
            format!("{ember}.attn.o_proj"),
            format!("{hf}.attn.c_proj"),
        );
        norm(&mut map, format!("{ember}.mlp_norm"), format!("{hf}.ln_2"));
        linear(
            &mut map,
            format!("{ember}.mlp.up_proj"),
            format!("{hf}.mlp.c_fc"),
        );
        linear(
            &mut map,
            format!("{ember}.mlp.down_proj"),
            format!("{hf}.mlp.c_proj"),
        );
    }
    norm(&mut map, "final_norm".into(), "transformer.ln_f".into());
    if !config.tie_embeddings {
        map.push(TensorEntry::new("lm_head.weight", "lm_head.weight", true));
    }
    map
}
