//! Mixtral (`mixtral`): Mistral with `num_local_experts` SwiGLU experts (`w1` gate, `w3`
//! up, `w2` down), a softmax router, top-`num_experts_per_tok`, weights renormalised.

use ember_nn::{MoeConfig, TransformerConfig};
use serde_json::{Map, Value, json};

use super::keys::Keys;
use super::llama::{self, Llama};
use super::mistral::Mistral;
use super::registry::Family;
use crate::error::HfError;
use crate::names::TensorEntry;

pub(super) struct Mixtral;

impl Family for Mixtral {
    fn read(&self, keys: &Keys) -> Result<TransformerConfig, HfError> {
        let mut model = Mistral.read(keys)?;
        model.moe = Some(MoeConfig {
            n_experts: keys.usize("num_local_experts")?,
            top_k: keys.usize("num_experts_per_tok")?,
            renormalize: true,
            capacity_factor: None,
            aux_loss_coef: keys.opt_f64("router_aux_loss_coef")?.unwrap_or(0.02),
            z_loss_coef: 0.0,
        });
        Ok(model)
    }

    fn write(&self, model: &TransformerConfig, map: &mut Map<String, Value>) {
        Mistral.write(model, map);
        let moe = model.moe.as_ref().expect("export_arch checked the MoE");
        map.insert("num_local_experts".into(), json!(moe.n_experts));
        map.insert("num_experts_per_tok".into(), json!(moe.top_k));
        map.insert("router_aux_loss_coef".into(), json!(moe.aux_loss_coef));
        map.insert("output_router_logits".into(), json!(false));
    }

    /// Llama's tensors with each layer's MLP replaced by `block_sparse_moe`: the router
    /// `gate` and the experts' `w1`, `w2`, `w3`.
    fn tensor_map(&self, config: &TransformerConfig) -> Vec<TensorEntry> {
        let n_experts = config.moe.as_ref().map_or(0, |moe| moe.n_experts);
        llama::tensors_with_mlp(config, |map, ember, hf| {
            let hf_moe = format!("{hf}.block_sparse_moe");
            map.push(TensorEntry::new(
                format!("{ember}.moe.router.weight"),
                format!("{hf_moe}.gate.weight"),
                true,
            ));
            for e in 0..n_experts {
                for (proj, w) in [("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")] {
                    map.push(TensorEntry::new(
                        format!("{ember}.moe.experts.{e}.{proj}.weight"),
                        format!("{hf_moe}.experts.{e}.{w}.weight"),
                        true,
                    ));
                }
            }
        })
    }

    fn config_key(&self, field: &str) -> Option<&'static str> {
        match field {
            "moe.n_experts" => Some("num_local_experts"),
            "moe.top_k" => Some("num_experts_per_tok"),
            "moe.aux_loss_coef" => Some("router_aux_loss_coef"),
            _ => Llama.config_key(field),
        }
    }
}
