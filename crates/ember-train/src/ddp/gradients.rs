//! Gradients averaged over ranks in buckets, and parameters copied from rank 0.
//!
//! Each rank's gradients are already weighted by its share of the global batch (see
//! `trainer::step`), so the all-reduce sums them. Like PyTorch's DDP, whole tensors are
//! flattened into buckets of about [`DEFAULT_BUCKET_BYTES`] and one all-reduce runs per
//! bucket. Only parameters that require a gradient take part (a PEFT run's adapters, a
//! partly frozen model's trainable part); one that received no gradient on any rank
//! (an expert no row was routed to) stays without one, as in a single process.

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::collective::{Collective, CollectiveError};

/// PyTorch DDP's default bucket size (`bucket_cap_mb = 25`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// What an all-reduce of a step's gradients moved.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReduceStats {
    /// Collectives run (buckets, and the one carrying which gradients exist).
    pub collectives: usize,
    /// Gradient values summed (f32 each).
    pub values: usize,
}

/// Sums `grads` over every rank of `collective` for `model`'s trainable parameters,
/// in buckets of at most `bucket_bytes` (0: one collective per tensor); `what` names the
/// step in errors.
pub fn all_reduce_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &mut GradientsParams,
    collective: &mut dyn Collective,
    bucket_bytes: usize,
    what: &str,
) -> Result<ReduceStats, CollectiveError> {
    // Flatten, in the model's visiting order (the same on every rank).
    let mut flat = Flatten::<B> {
        grads,
        values: Vec::new(),
        tensors: Vec::new(),
        device: None,
    };
    model.visit(&mut flat);
    let Flatten {
        mut values,
        tensors,
        device,
        ..
    } = flat;
    let mut present: Vec<f32> = tensors.iter().map(|t| f32::from(t.present)).collect();
    let mut stats = ReduceStats {
        values: values.len(),
        ..Default::default()
    };
    for range in buckets(&tensors, bucket_bytes / 4) {
        collective.all_reduce_sum_f32(&mut values[range], what)?;
        stats.collectives += 1;
    }
    collective.all_reduce_sum_f32(&mut present, what)?;
    stats.collectives += 1;
    // Back into tensors: the ones some rank had.
    let Some(device) = device else {
        return Ok(stats);
    };
    let mut unflatten = Unflatten::<B> {
        grads,
        values: &values,
        present: &present,
        next: 0,
        offset: 0,
        device,
    };
    model.visit(&mut unflatten);
    Ok(stats)
}

/// A trainable tensor's place in the flat vector.
struct Place {
    len: usize,
    present: bool,
}

/// Contiguous ranges of whole tensors, each at most `cap` values (a larger tensor has
/// its own); `cap` 0: one range per tensor.
fn buckets(tensors: &[Place], cap: usize) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    for t in tensors {
        let end = start + t.len;
        match out.last_mut() {
            Some(last) if cap > 0 && last.end == start && end - last.start <= cap => last.end = end,
            _ => out.push(start..end),
        }
        start = end;
    }
    out
}

struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    values: Vec<f32>,
    tensors: Vec<Place>,
    device: Option<burn::tensor::Device<B::InnerBackend>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let len = param.shape().num_elements();
        let grad = self.grads.remove::<B::InnerBackend, D>(param.id);
        let present = grad.is_some();
        match grad {
            Some(grad) => {
                self.device.get_or_insert_with(|| grad.device());
                let data = grad.into_data().convert::<f32>();
                self.values
                    .extend_from_slice(data.as_slice::<f32>().expect("converted to f32"));
            }
            None => self.values.extend(std::iter::repeat_n(0.0, len)),
        }
        self.tensors.push(Place { len, present });
    }
}

struct Unflatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    values: &'a [f32],
    present: &'a [f32],
    next: usize,
    offset: usize,
    device: burn::tensor::Device<B::InnerBackend>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() {
            return;
        }
        let shape = param.shape();
        let len = shape.num_elements();
        let span = self.offset..self.offset + len;
        self.offset += len;
        let present = self.present[self.next] > 0.0;
        self.next += 1;
        if present {
            let data = TensorData::new(self.values[span].to_vec(), shape);
            let grad = Tensor::<B::InnerBackend, D>::from_data(data, &self.device);
            self.grads.register::<B::InnerBackend, D>(param.id, grad);
        }
    }
}

/// Every float parameter of `model` (`trainable_only`: those that require a gradient, as
/// when the frozen rest is a base model every rank loaded itself) set to rank 0's
/// values, in buckets of at most `bucket_bytes`; parameters keep their ids and whether
/// they train.
pub fn broadcast_parameters<B: Backend, M: Module<B>>(
    model: M,
    collective: &mut dyn Collective,
    bucket_bytes: usize,
    trainable_only: bool,
) -> Result<M, CollectiveError> {
    let values = match trainable_only {
        true => ember_nn::trainable_values(&model),
        false => ember_nn::param_values(&model),
    };
    let mut flat: Vec<f32> = Vec::new();
    let mut tensors = Vec::new();
    for (_, data) in &values {
        let data = data.clone().convert::<f32>();
        let slice = data.as_slice::<f32>().expect("converted to f32");
        flat.extend_from_slice(slice);
        tensors.push(Place {
            len: slice.len(),
            present: true,
        });
    }
    for range in buckets(&tensors, bucket_bytes / 4) {
        collective.broadcast_f32(&mut flat[range], "the parameter broadcast from rank 0")?;
    }
    let mut offset = 0;
    let mut by_path: std::collections::HashMap<String, TensorData> = values
        .into_iter()
        .map(|(path, data)| {
            let len = data.shape.iter().product::<usize>();
            let copy = TensorData::new(flat[offset..offset + len].to_vec(), data.shape.clone())
                .convert_dtype(data.dtype);
            offset += len;
            (path, copy)
        })
        .collect();
    let sent: std::collections::HashSet<String> = by_path.keys().cloned().collect();
    ember_nn::replace_params_where(model, &|path| sent.contains(path), &mut |path, _| {
        by_path
            .remove(path)
            .ok_or_else(|| format!("no broadcast value for `{path}`"))
    })
    .map_err(CollectiveError::Failed)
}

/// How many values a parameter id occupies, for tests and benchmarks: the trainable
/// tensors of `model` as `(id, len)` in reduction order.
pub fn reduction_order<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
) -> Vec<(ParamId, usize)> {
    struct Order(Vec<(ParamId, usize)>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Order {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                self.0.push((param.id, param.shape().num_elements()));
            }
        }
    }
    let mut order = Order(Vec::new());
    model.visit(&mut order);
    order.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_whole_tensors_up_to_the_cap() {
        let places = |lens: &[usize]| -> Vec<Place> {
            lens.iter()
                .map(|&len| Place { len, present: true })
                .collect()
        };
        assert_eq!(
            buckets(&places(&[3, 4, 5, 20, 1]), 10),
            vec![0..7, 7..12, 12..32, 32..33]
        );
        assert_eq!(buckets(&places(&[3, 4]), 0), vec![0..3, 3..7]);
        assert_eq!(buckets(&places(&[3, 4]), 100), vec![0..7]);
        assert!(buckets(&[], 10).is_empty());
    }
}
