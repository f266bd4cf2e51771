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
        // The device of the reduced gradients: the parameters' (a rank may have none).
        self.device
            .get_or_insert_with(|| param.val().inner().device());
        let grad = self.grads.remove::<B::InnerBackend, D>(param.id);
        let present = grad.is_some();
        match grad {
            Some(grad) => {
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
    use crate::ddp::LocalGroup;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::Linear;
    use std::time::Duration;

    type A = Autodiff<Flex>;

    /// A `[3, 2]` linear map whose weight is `w` everywhere and bias `b` (frozen when
    /// `frozen_bias`).
    fn linear(w: f32, b: f32, frozen_bias: bool) -> Linear<A> {
        let device = Default::default();
        let bias = Param::from_tensor(Tensor::<A, 1>::full([2], b, &device));
        Linear {
            weight: Param::from_tensor(Tensor::full([3, 2], w, &device)),
            bias: Some(bias.set_require_grad(!frozen_bias)),
        }
    }

    fn values<const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    fn on_ranks<T: Send>(world: usize, f: impl Fn(LocalGroup) -> T + Sync) -> Vec<T> {
        let groups = LocalGroup::new(world, Duration::from_secs(10));
        std::thread::scope(|s| {
            let handles: Vec<_> = groups.into_iter().map(|g| s.spawn(|| f(g))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn rank_0_parameters_reach_every_rank_and_trainable_only_leaves_the_frozen_ones() {
        let out = on_ranks(3, |mut g| {
            let r = g.rank() as f32;
            // Buckets of 16 bytes: the weight (6 values) alone, then the bias.
            let all =
                broadcast_parameters(linear(r + 1.0, 10.0 * (r + 1.0), false), &mut g, 16, false)
                    .unwrap();
            let some =
                broadcast_parameters(linear(r + 1.0, 10.0 * (r + 1.0), true), &mut g, 16, true)
                    .unwrap();
            (
                values(all.weight.val()),
                values(all.bias.unwrap().val()),
                values(some.weight.val()),
                values(some.bias.as_ref().unwrap().val()),
                some.bias.unwrap().is_require_grad(),
            )
        });
        for (rank, (w, b, w_some, b_some, bias_trains)) in out.into_iter().enumerate() {
            assert_eq!(w, vec![1.0; 6]);
            assert_eq!(b, vec![10.0; 2]);
            assert_eq!(w_some, vec![1.0; 6]);
            // The frozen bias is each rank's own.
            assert_eq!(b_some, vec![10.0 * (rank as f32 + 1.0); 2]);
            assert!(!bias_trains);
        }
    }

    #[test]
    fn gradients_are_summed_and_one_any_rank_has_is_everyone_s() {
        let out = on_ranks(2, |mut g| {
            let model = linear(0.0, 0.0, false);
            let device = Default::default();
            let mut grads = GradientsParams::new();
            // Rank 0 has a weight gradient only, rank 1 a bias gradient and a weight one.
            let r = g.rank() as f32;
            grads.register::<Flex, 2>(model.weight.id, Tensor::full([3, 2], r + 1.0, &device));
            if g.rank() == 1 {
                let bias = model.bias.as_ref().unwrap();
                grads.register::<Flex, 1>(bias.id, Tensor::full([2], 5.0, &device));
            }
            let stats = all_reduce_gradients(&model, &mut grads, &mut g, 0, "test").unwrap();
            let w = grads
                .get::<Flex, 2>(model.weight.id)
                .map(|t| t.into_data().to_vec::<f32>().unwrap());
            let b = grads
                .get::<Flex, 1>(model.bias.as_ref().unwrap().id)
                .map(|t| t.into_data().to_vec::<f32>().unwrap());
            (w, b, stats)
        });
        for (w, b, stats) in out {
            assert_eq!(w, Some(vec![3.0; 6]));
            assert_eq!(b, Some(vec![5.0; 2]));
            // One collective per tensor, and one for which gradients exist.
            assert_eq!(
                stats,
                ReduceStats {
                    collectives: 3,
                    values: 8
                }
            );
        }
    }

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
