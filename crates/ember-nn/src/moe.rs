//! Mixture-of-Experts feed-forward layer with top-k routing (Switch / Mixtral style).
//!
//! ```text
//! probs   = softmax(router(x))                      [tokens, n_experts]
//! experts = top_k(probs)                            [tokens, k], weights renormalised
//! y[t]    = Σ_j weight[t, j] · expert[experts[t, j]](x[t])
//! ```
//! Tokens are grouped by expert: the `(token, slot)` assignments are sorted by expert,
//! the tokens gathered once into `[assignments, d_model]`, each expert runs on its
//! contiguous slice, and the weighted results are scattered back (summed per token).
//! With a capacity factor, an expert serves at most
//! `ceil(capacity_factor · tokens · k / n_experts)` assignments, first choices before
//! second choices; the rest are dropped (the residual connection carries those tokens).

use burn::module::Module;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use ember_ops::FusedBackend;

use crate::config::{MlpKind, MoeConfig};
use crate::init::{Init, Role};
use crate::mlp::Mlp;
use crate::projection::Projection;

/// A router over SwiGLU experts.
#[derive(Module, Debug)]
pub struct Moe<B: Backend> {
    /// `[d_model, n_experts]`, no bias.
    pub router: Projection<B>,
    pub experts: Vec<Mlp<B>>,
    pub top_k: usize,
    pub renormalize: bool,
    /// `0.0` for no capacity limit.
    pub capacity_factor: f64,
}

/// What one MoE layer computed besides its output.
#[derive(Debug, Clone)]
pub struct MoeAux<B: Backend> {
    /// Switch load-balancing loss `n_experts · Σ_e f_e · P_e`, where `f_e` is the share of
    /// assignments routed to expert `e` (before capacity dropping) and `P_e` its mean
    /// router probability; 1 when perfectly balanced. `[1]`
    pub balance_loss: Tensor<B, 1>,
    /// Router z-loss `mean_t (logsumexp_e logits[t, e])²`. `[1]`
    pub z_loss: Tensor<B, 1>,
    /// Assignments routed to each expert (before dropping).
    pub load: Vec<usize>,
    /// Assignments dropped by the capacity limit.
    pub dropped: usize,
}

/// The routing decisions of one batch, on the host.
#[derive(Debug, Clone)]
pub struct Routing {
    /// `[tokens * top_k]`: the chosen experts of each token, best first.
    pub experts: Vec<usize>,
    /// Assignment indices `t * top_k + j` that an expert serves, grouped by expert
    /// (expert 0's first), first choices before second choices within a group.
    pub order: Vec<usize>,
    /// Assignments each expert serves (after the capacity limit), summing to `order.len()`.
    pub served: Vec<usize>,
    /// Assignments each expert was chosen for (before the limit).
    pub load: Vec<usize>,
}

/// Top-k experts per token (ties to the lower index) and their grouping, with at most
/// `capacity` assignments per expert.
pub fn route(probs: &[f32], n_experts: usize, top_k: usize, capacity: Option<usize>) -> Routing {
    let tokens = probs.len() / n_experts;
    let mut experts = Vec::with_capacity(tokens * top_k);
    for row in probs.chunks(n_experts) {
        let mut idx: Vec<usize> = (0..n_experts).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        experts.extend_from_slice(&idx[..top_k]);
    }
    let mut groups = vec![Vec::new(); n_experts];
    for slot in 0..top_k {
        for t in 0..tokens {
            let a = t * top_k + slot;
            groups[experts[a]].push(a);
        }
    }
    let load: Vec<usize> = groups.iter().map(Vec::len).collect();
    let mut order = Vec::with_capacity(tokens * top_k);
    let mut served = Vec::with_capacity(n_experts);
    for group in &groups {
        let n = capacity.map_or(group.len(), |c| group.len().min(c));
        served.push(n);
        order.extend_from_slice(&group[..n]);
    }
    Routing {
        experts,
        order,
        served,
        load,
    }
}

impl<B: FusedBackend> Moe<B> {
    pub fn new(
        config: &MoeConfig,
        d_model: usize,
        d_ff: usize,
        bias: bool,
        init: &Init,
        device: &B::Device,
    ) -> Self {
        Self {
            router: init.linear(d_model, config.n_experts, false, Role::Input, device),
            experts: (0..config.n_experts)
                .map(|_| Mlp::new(MlpKind::SwiGlu, d_model, d_ff, bias, init, device))
                .collect(),
            top_k: config.top_k,
            renormalize: config.renormalize,
            capacity_factor: config.capacity_factor.unwrap_or(0.0),
        }
    }

    /// Assignments one expert may serve for `tokens` tokens, `None` without a limit.
    pub fn capacity(&self, tokens: usize) -> Option<usize> {
        (self.capacity_factor > 0.0).then(|| {
            (self.capacity_factor * (tokens * self.top_k) as f64 / self.experts.len() as f64).ceil()
                as usize
        })
    }

    /// `[tokens, d_model]` → `[tokens, d_model]` and the auxiliary losses.
    pub fn forward_rows(&self, x: Tensor<B, 2>) -> (Tensor<B, 2>, MoeAux<B>) {
        let device = x.device();
        let [tokens, d_model] = x.dims();
        let n_experts = self.experts.len();
        // The router multiplies at the model's dtype, never at the reduced matmul
        // precision of `train.matmul_precision`: it chooses experts.
        let logits = self.router.forward_rows_with(x.clone(), |a, b| a.matmul(b));
        let probs = softmax(logits.clone(), 1);
        let host: Vec<f32> = probs.clone().into_data().convert::<f32>().to_vec().unwrap();
        let routing = route(&host, n_experts, self.top_k, self.capacity(tokens));

        // Differentiable weights of every (token, slot): [tokens * k].
        let chosen = Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                routing
                    .experts
                    .iter()
                    .map(|&e| e as i64)
                    .collect::<Vec<_>>(),
                [tokens, self.top_k],
            ),
            &device,
        );
        let weights = probs.clone().gather(1, chosen);
        let weights = if self.renormalize {
            weights.clone() / weights.sum_dim(1)
        } else {
            weights
        };
        let weights = weights.reshape([tokens * self.top_k]);

        let mut out = Tensor::<B, 2>::zeros([tokens, d_model], &device);
        if !routing.order.is_empty() {
            let index = |v: Vec<i64>| {
                let n = v.len();
                Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), &device)
            };
            let token_of = index(
                routing
                    .order
                    .iter()
                    .map(|&a| (a / self.top_k) as i64)
                    .collect(),
            );
            let slot_weight =
                weights.select(0, index(routing.order.iter().map(|&a| a as i64).collect()));
            // Gather once, run each expert on its contiguous slice, scatter back.
            let x_dtype = x.dtype();
            let grouped = x.select(0, token_of.clone());
            let mut outputs = Vec::with_capacity(n_experts);
            let mut start = 0;
            for (expert, &n) in self.experts.iter().zip(&routing.served) {
                if n > 0 {
                    outputs.push(expert.forward_rows(grouped.clone().narrow(0, start, n)));
                }
                start += n;
            }
            // Expert outputs in f32 (low precision under autocast), weighted in f32.
            let expert_out =
                ember_ops::fused::autocast::cast_to(Tensor::cat(outputs, 0), x_dtype.into())
                    * slot_weight.unsqueeze_dim(1);
            out = out.select_assign(0, token_of, expert_out, IndexingUpdateOp::Add);
        }

        // Switch balance loss with f_e from the (non-differentiable) routing counts.
        let share: Vec<f32> = routing
            .load
            .iter()
            .map(|&n| n as f32 / (tokens * self.top_k) as f32)
            .collect();
        let share = Tensor::<B, 1>::from_data(TensorData::new(share, [n_experts]), &device);
        let mean_prob = probs.mean_dim(0).reshape([n_experts]);
        let balance_loss = (share * mean_prob).sum().mul_scalar(n_experts as f64);
        // logsumexp(logits) = logits - log_softmax(logits) for any column.
        let lse = (logits.clone() - log_softmax(logits, 1)).narrow(1, 0, 1);
        let z_loss = lse.powi_scalar(2).mean();
        let dropped = routing.load.iter().sum::<usize>() - routing.order.len();
        (
            out,
            MoeAux {
                balance_loss,
                z_loss,
                load: routing.load,
                dropped,
            },
        )
    }
}

/// The auxiliary losses and expert loads of every MoE layer of one forward pass, summed
/// over layers; pass one in [`crate::ForwardOptions::moe`] to collect them.
#[derive(Debug, Clone)]
pub struct MoeLosses<B: Backend> {
    /// Σ over layers of [`MoeAux::balance_loss`]. `[1]`
    pub balance_loss: Option<Tensor<B, 1>>,
    /// Σ over layers of [`MoeAux::z_loss`]. `[1]`
    pub z_loss: Option<Tensor<B, 1>>,
    /// Per layer, assignments routed to each expert.
    pub load: Vec<Vec<usize>>,
    /// Assignments dropped by capacity limits, all layers.
    pub dropped: usize,
}

impl<B: Backend> Default for MoeLosses<B> {
    fn default() -> Self {
        Self {
            balance_loss: None,
            z_loss: None,
            load: Vec::new(),
            dropped: 0,
        }
    }
}

impl<B: Backend> MoeLosses<B> {
    /// Adds one layer's results.
    pub fn push(&mut self, aux: MoeAux<B>) {
        let add =
            |acc: Option<Tensor<B, 1>>, t: Tensor<B, 1>| Some(acc.map_or(t.clone(), |a| a + t));
        self.balance_loss = add(self.balance_loss.take(), aux.balance_loss);
        self.z_loss = add(self.z_loss.take(), aux.z_loss);
        self.load.push(aux.load);
        self.dropped += aux.dropped;
    }
}
