//! [`RankAllocator`]'s state for checkpoints: JSON and named f32 tensors.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::importance::{Scores, Triplet};
use super::{AllocatorTensor, PARTS, RankAllocator};
use crate::targets::PeftError;

const STATE_FORMAT: &str = "ember-adalora-allocator/1";

impl RankAllocator {
    /// The state to checkpoint: JSON (the modules, the last rank pattern) and the scores
    /// as named f32 tensors `<path>.<down|rank_scale|up>.<exp_avg_ipt|exp_avg_unc>` in
    /// Ember's layout (none for an adapter pruned to rank 0, and none at all once the
    /// final mask dropped the scores). Gradients observed but not yet used are not part
    /// of it.
    pub fn state(&self) -> (Value, Vec<AllocatorTensor>) {
        let modules: Vec<Value> = self
            .modules
            .iter()
            .map(|m| json!({"path": m.path, "d_in": m.d_in, "d_out": m.d_out, "rank": m.rank}))
            .collect();
        let mut tensors = Vec::new();
        for m in &self.modules {
            let Some(s) = self.scores.get(&m.path) else {
                continue;
            };
            for (kind, t) in [("exp_avg_ipt", &s.ipt), ("exp_avg_unc", &s.unc)] {
                for ((part, shape), values) in PARTS.iter().zip(m.shapes()).zip(t.parts()) {
                    if values.is_empty() {
                        continue; // rank 0
                    }
                    tensors.push((format!("{}.{part}.{kind}", m.path), shape, values.clone()));
                }
            }
        }
        let state = json!({
            "format": STATE_FORMAT,
            "modules": modules,
            "init_budget": self.init_budget,
            "target_budget": self.target_budget,
            "scored": !self.scores.is_empty(),
            "rank_pattern": self.rank_pattern,
        });
        (state, tensors)
    }

    /// Restores what [`Self::state`] gave, for an allocator made for the same adapters.
    /// `Err` says what does not fit; `self` is unchanged then.
    pub fn load_state(
        &mut self,
        state: &Value,
        tensors: &[AllocatorTensor],
    ) -> Result<(), PeftError> {
        let err = |msg: String| PeftError(format!("AdaLoRA allocator state: {msg}"));
        if state["format"] != STATE_FORMAT {
            return Err(err(format!(
                "format {}, expected {STATE_FORMAT:?}",
                state["format"]
            )));
        }
        let modules: Vec<Value> = self
            .modules
            .iter()
            .map(|m| json!({"path": m.path, "d_in": m.d_in, "d_out": m.d_out, "rank": m.rank}))
            .collect();
        if state["modules"] != Value::Array(modules) {
            return Err(err(format!(
                "saved for the adapters {}, not this model's",
                state["modules"]
            )));
        }
        let rank_pattern: Option<BTreeMap<String, Vec<bool>>> =
            serde_json::from_value(state["rank_pattern"].clone())
                .map_err(|e| err(format!("rank_pattern: {e}")))?;
        let mut scores = BTreeMap::new();
        if state["scored"].as_bool().unwrap_or(false) {
            let by_name: BTreeMap<&str, (&Vec<usize>, &Vec<f32>)> = tensors
                .iter()
                .map(|(n, s, v)| (n.as_str(), (s, v)))
                .collect();
            for m in &self.modules {
                let read = |kind: &str| -> Result<Triplet, PeftError> {
                    let mut t = Triplet::zeros(m);
                    for ((part, shape), slot) in PARTS.iter().zip(m.shapes()).zip(t.parts_mut()) {
                        if slot.is_empty() {
                            continue; // rank 0: nothing saved
                        }
                        let name = format!("{}.{part}.{kind}", m.path);
                        match by_name.get(name.as_str()) {
                            Some((s, v)) if **s == shape && v.len() == slot.len() => {
                                slot.clone_from(v);
                            }
                            Some((s, _)) => {
                                return Err(err(format!(
                                    "`{name}` has shape {s:?}, expected {shape:?}"
                                )));
                            }
                            None => return Err(err(format!("`{name}` is missing"))),
                        }
                    }
                    Ok(t)
                };
                let ipt = read("exp_avg_ipt")?;
                let unc = read("exp_avg_unc")?;
                scores.insert(m.path.clone(), Scores { ipt, unc });
            }
        }
        self.scores = scores;
        self.rank_pattern = rank_pattern;
        self.pending = None;
        Ok(())
    }
}
