//! A base model's fingerprint: what an adapter trained on it records, so that loading the
//! adapter onto other weights is refused by name instead of giving silent nonsense.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ember_nn::{Transformer, param_infos};
use sha2::{Digest, Sha256};

/// SHA-256 over every parameter's path, shape and f32 values (little-endian), in the
/// model's order, as 64 hex digits. Adapter tensors (paths with `.adapter.`) are left
/// out, so a model carrying an adapter hashes as its base.
pub fn base_fingerprint<B: Backend>(model: &Transformer<B>) -> String {
    let infos = param_infos::<B, _>(model);
    let mut visitor = Hasher {
        hasher: Sha256::new(),
        paths: infos.iter().map(|p| p.path.clone()).collect(),
        next: 0,
    };
    model.visit(&mut visitor);
    visitor
        .hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Hasher {
    hasher: Sha256,
    /// Parameter paths in visiting order.
    paths: Vec<String>,
    next: usize,
}

impl<B: Backend> ModuleVisitor<B> for Hasher {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.paths.get(self.next).cloned().unwrap_or_default();
        self.next += 1;
        if path.contains(".adapter.") {
            return;
        }
        self.hasher.update(path.as_bytes());
        self.hasher.update([0]);
        for d in param.shape().dims::<D>() {
            self.hasher.update((d as u64).to_le_bytes());
        }
        let data = param.val().into_data().convert::<f32>();
        match data.as_slice::<f32>() {
            Ok(values) => {
                for v in values {
                    self.hasher.update(v.to_le_bytes());
                }
            }
            Err(_) => self.hasher.update(data.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use ember_nn::TransformerConfig;

    fn tiny() -> TransformerConfig {
        // vocab, d_model, layers, heads, kv heads, d_ff, context
        TransformerConfig::llama(11, 8, 1, 2, 1, 12, 8)
    }

    #[test]
    fn same_weights_same_fingerprint_one_changed_value_differs() {
        let device = Default::default();
        let model = Transformer::<Flex>::new(&tiny(), &device).unwrap();
        let a = base_fingerprint(&model);
        assert_eq!(a.len(), 64);
        assert_eq!(a, base_fingerprint(&model.clone()));
        let mut changed = false;
        let model = ember_nn::replace_params_where(
            model,
            &|path| path == "final_norm.gamma",
            &mut |_, shape| {
                changed = true;
                let mut v = vec![1.0f32; shape.iter().product()];
                v[0] = 1.0 + f32::EPSILON;
                Ok(burn::tensor::TensorData::new(v, shape.to_vec()))
            },
        )
        .unwrap();
        assert!(changed);
        assert_ne!(a, base_fingerprint(&model));
    }
}
