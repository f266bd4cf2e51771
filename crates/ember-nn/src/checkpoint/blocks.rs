//! [`BlockCheckpoints`]: the checkpointed blocks of one forward pass, then its backward
//! pass; see [`super`].

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ember_ops::{FusedBackend, MaskMod};

use super::ActivationCheckpointing;
use crate::block::Block;
use crate::context::{LayerContext, Positions};
use crate::moe::{MoeAux, MoeLosses};
use crate::transformer::Transformer;

/// What the backward pass needs to run one block again.
struct Record<B: Backend> {
    layer: usize,
    /// The block's input as the pass produced it; its graph leads back to the previous
    /// checkpointed block's output or to the embeddings.
    input: Tensor<B, 3>,
    /// The block's output: a fresh leaf of the graph that follows. `[batch, seq, d_model]`
    output: Tensor<B, 3>,
    /// MoE blocks: the balance and z-losses, fresh leaves. `[1]` each
    aux: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    /// The auxiliary losses of the plain MoE blocks between the previous checkpointed
    /// block and this one: each as computed (its graph shares the blocks' nodes with
    /// `input`) and as the fresh leaf the loss used, so that one backward pass through
    /// those blocks carries both.
    segment_aux: Vec<(Tensor<B, 1>, Tensor<B, 1>)>,
    positions: Positions,
    documents: Option<MaskMod>,
    /// The generator seed the block's dropout masks were drawn with.
    seed: Option<u64>,
}

/// One forward pass's checkpointed blocks, then its backward pass; see the module docs.
pub struct BlockCheckpoints<B: Backend> {
    policy: ActivationCheckpointing,
    dropout_seed: Option<u64>,
    records: Vec<Record<B>>,
    /// [`Record::segment_aux`] of the next checkpointed block, as the blocks before it run.
    segment_aux: Vec<(Tensor<B, 1>, Tensor<B, 1>)>,
    /// The seed the generator was left at after the blocks, restored after the backward
    /// pass has drawn the recomputed blocks' masks.
    resume_seed: Option<u64>,
}

/// A 64-bit mix of `seed` and `index` (splitmix64's finaliser).
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl<B: Backend> BlockCheckpoints<B> {
    pub fn new(policy: ActivationCheckpointing) -> Self {
        Self {
            policy,
            dropout_seed: None,
            records: Vec::new(),
            segment_aux: Vec::new(),
            resume_seed: None,
        }
    }

    /// Seeds the generator before each block (from `seed` and the block's index) and
    /// after the last, so that dropout masks drawn again in the backward pass are the ones
    /// drawn first. Give every micro-batch its own seed.
    pub fn with_dropout_seed(mut self, seed: u64) -> Self {
        self.dropout_seed = Some(seed);
        self
    }

    pub fn policy(&self) -> ActivationCheckpointing {
        self.policy
    }

    /// How many blocks the forward pass checkpointed.
    pub fn recorded(&self) -> usize {
        self.records.len()
    }

    /// The seed block `layer` draws its dropout masks with, after seeding the generator
    /// with it.
    pub(crate) fn before_block(&self, layer: usize, device: &B::Device) -> Option<u64> {
        let seed = mix(self.dropout_seed?, layer as u64);
        B::seed(device, seed);
        Some(seed)
    }

    /// Reseeds the generator after the last of `n_layers` blocks.
    pub(crate) fn after_blocks(&mut self, n_layers: usize, device: &B::Device) {
        if let Some(base) = self.dropout_seed {
            let seed = mix(base, n_layers as u64);
            B::seed(device, seed);
            self.resume_seed = Some(seed);
        }
    }

    /// Whether the policy runs block `layer` of `n_layers` again. Never the last: the
    /// backward pass starts with it, so keeping its activations costs no more memory
    /// than running it again would, and saves the time.
    fn chosen(&self, layer: usize, n_layers: usize) -> bool {
        self.policy.recomputes_block(layer) && layer + 1 < n_layers
    }

    /// Whether block `ctx.layer` of `n_layers` runs checkpointed: the policy chooses it,
    /// and the pass has no cache, prefix or hooks (state a second run would repeat).
    pub(crate) fn recomputes(&self, ctx: &LayerContext<'_, B>, n_layers: usize) -> bool {
        self.chosen(ctx.layer, n_layers)
            && ctx.cache.is_none()
            && ctx.prefix.is_none()
            && ctx.hooks.is_none()
    }
}

impl<B: FusedBackend> BlockCheckpoints<B> {
    /// Runs `block` on `x` (`[batch, seq, d_model]`) without recording it for autodiff
    /// and records what running it again takes. Returns the output as a fresh leaf; MoE
    /// blocks report their auxiliary losses to `ctx.moe` as fresh leaves too.
    pub(crate) fn forward(
        &mut self,
        block: &Block<B>,
        x: Tensor<B, 3>,
        ctx: &mut LayerContext<'_, B>,
        seed: Option<u64>,
    ) -> Tensor<B, 3> {
        let untracked = block.clone().no_grad();
        let mut moe = ctx.moe.is_some().then(MoeLosses::default);
        let y = {
            let mut inner = LayerContext::plain(ctx.layer, ctx.positions, ctx.rope);
            inner.documents = ctx.documents;
            inner.moe = moe.as_mut();
            // `detach` keeps a leaf's `require_grad` (the previous block's output is one):
            // drop it too, or this pass would record a graph after all.
            untracked.forward(x.clone().detach().set_require_grad(false), &mut inner)
        };
        let output = y.detach().require_grad();
        let aux = report_as_leaves(moe, ctx).map(|[(_, balance), (_, z)]| (balance, z));
        self.records.push(Record {
            layer: ctx.layer,
            input: x,
            output: output.clone(),
            aux,
            segment_aux: std::mem::take(&mut self.segment_aux),
            positions: ctx.positions.clone(),
            documents: ctx.documents.cloned(),
            seed,
        });
        output
    }

    /// Runs `block`, which is not checkpointed, in a pass of `n_layers` blocks. When a
    /// later block is checkpointed, an MoE block's auxiliary losses reach the loss as
    /// fresh leaves (see [`Record::segment_aux`]).
    pub(crate) fn plain(
        &mut self,
        block: &Block<B>,
        x: Tensor<B, 3>,
        ctx: &mut LayerContext<'_, B>,
        n_layers: usize,
    ) -> Tensor<B, 3> {
        let later = (ctx.layer + 1..n_layers).any(|l| self.chosen(l, n_layers));
        // A pass with a cache, prefix or hooks checkpoints nothing (see `recomputes`).
        let checkpointing = ctx.cache.is_none() && ctx.prefix.is_none() && ctx.hooks.is_none();
        if !later || !checkpointing || ctx.moe.is_none() {
            return block.forward(x, ctx);
        }
        let mut moe = MoeLosses::default();
        let y = {
            let mut inner = LayerContext::plain(ctx.layer, ctx.positions, ctx.rope);
            inner.documents = ctx.documents;
            inner.moe = Some(&mut moe);
            block.forward(x, &mut inner)
        };
        if let Some(pairs) = report_as_leaves(Some(moe), ctx) {
            self.segment_aux.extend(pairs);
        }
        y
    }
}

/// Reports one block's auxiliary losses from `local` to `ctx.moe` as fresh leaves;
/// returns `[(balance, leaf), (z, leaf)]` (none for a dense block).
fn report_as_leaves<B: Backend>(
    local: Option<MoeLosses<B>>,
    ctx: &mut LayerContext<'_, B>,
) -> Option<[(Tensor<B, 1>, Tensor<B, 1>); 2]> {
    let MoeLosses {
        balance_loss: Some(balance),
        z_loss: Some(z),
        load,
        dropped,
    } = local?
    else {
        return None;
    };
    let losses = ctx.moe.as_deref_mut()?;
    let (balance_leaf, z_leaf) = (
        balance.clone().detach().require_grad(),
        z.clone().detach().require_grad(),
    );
    losses.push(MoeAux {
        balance_loss: balance_leaf.clone(),
        z_loss: z_leaf.clone(),
        load: load.into_iter().flatten().collect(),
        dropped,
    });
    Some([(balance, balance_leaf), (z, z_leaf)])
}

/// Adds to `pending[j]` the gradient `grads` holds for record `j`'s output.
fn collect_output_grads<B: AutodiffBackend>(
    records: &[Record<B>],
    grads: &B::Gradients,
    pending: &mut [Option<Tensor<B::InnerBackend, 3>>],
) {
    for (record, slot) in records.iter().zip(pending.iter_mut()) {
        if let Some(grad) = record.output.grad(grads) {
            *slot = Some(match slot.take() {
                Some(sum) => sum + grad,
                None => grad,
            });
        }
    }
}

impl<B: AutodiffBackend + FusedBackend> BlockCheckpoints<B> {
    /// The gradients of `loss` with respect to `model`'s parameters, where `model` ran
    /// the forward pass that filled these checkpoints (see the module docs). Without
    /// records this is `loss.backward()`.
    pub fn backward(self, loss: Tensor<B, 1>, model: &Transformer<B>) -> GradientsParams {
        self.backward_with(loss, model, model)
    }

    /// [`Self::backward`] for the parameters of `params`, a module that holds `model`
    /// and more (a fine-tune's adapters around it): the gradients of every parameter of
    /// `params` the loss reaches.
    pub fn backward_with<M: AutodiffModule<B>>(
        self,
        loss: Tensor<B, 1>,
        model: &Transformer<B>,
        params: &M,
    ) -> GradientsParams {
        let device = loss.device();
        let records = self.records;
        // Every plain block's losses went to the checkpointed block after it.
        debug_assert!(
            self.segment_aux.is_empty(),
            "auxiliary losses without a record"
        );
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut pending = vec![None; records.len()];
        let grads = loss.backward();
        collect_output_grads(&records, &grads, &mut pending);
        let aux_grads: Vec<_> = records
            .iter()
            .map(|r| {
                r.aux
                    .as_ref()
                    .map(|(balance, z)| (balance.grad(&grads), z.grad(&grads)))
            })
            .collect();
        let segment_aux_grads: Vec<Vec<_>> = records
            .iter()
            .map(|r| {
                r.segment_aux
                    .iter()
                    .map(|(_, leaf)| leaf.grad(&grads))
                    .collect()
            })
            .collect();
        accumulator.accumulate(params, GradientsParams::from_grads(grads, params));

        for k in (0..records.len()).rev() {
            let record = &records[k];
            let dx = pending[k].take().and_then(|dy| {
                Self::run_again(
                    record,
                    dy,
                    aux_grads[k].as_ref(),
                    model,
                    params,
                    &mut accumulator,
                )
            });
            match (k.checked_sub(1), dx) {
                // The previous block's output leaf is this block's input.
                (Some(prev), Some(dx)) if records[prev].layer + 1 == record.layer => {
                    pending[prev] = Some(match pending[prev].take() {
                        Some(sum) => sum + dx,
                        None => dx,
                    });
                }
                // Back through the blocks (or embeddings) between, with the auxiliary
                // losses of the MoE blocks among them.
                (_, dx) => {
                    let mut terms = Vec::new();
                    if let Some(dx) = dx {
                        terms.push((record.input.clone() * Tensor::from_inner(dx)).sum());
                    }
                    for ((aux, _), grad) in record.segment_aux.iter().zip(&segment_aux_grads[k]) {
                        if let Some(grad) = grad {
                            terms.push(aux.clone() * Tensor::from_inner(grad.clone()));
                        }
                    }
                    let Some(objective) = terms.into_iter().reduce(|a, b| a + b) else {
                        continue;
                    };
                    let grads = objective.backward();
                    collect_output_grads(&records[..k], &grads, &mut pending[..k]);
                    accumulator.accumulate(params, GradientsParams::from_grads(grads, params));
                }
            }
        }
        if let Some(seed) = self.resume_seed {
            B::seed(&device, seed);
        }
        accumulator.grads()
    }

    /// Runs `record`'s block again from its input with the graph on and differentiates
    /// it against `dy` (and the auxiliary losses against their gradients); adds the
    /// parameters' gradients to `accumulator` and returns the input's.
    fn run_again<M: AutodiffModule<B>>(
        record: &Record<B>,
        dy: Tensor<B::InnerBackend, 3>,
        aux_grads: Option<&AuxGrads<B>>,
        model: &Transformer<B>,
        params: &M,
        accumulator: &mut GradientsAccumulator<M>,
    ) -> Option<Tensor<B::InnerBackend, 3>> {
        if let Some(seed) = record.seed {
            B::seed(&record.input.device(), seed);
        }
        let x = record.input.clone().detach().require_grad();
        let mut moe = record.aux.as_ref().map(|_| MoeLosses::default());
        let y = {
            let mut ctx = LayerContext::plain(record.layer, &record.positions, model.rope.as_ref());
            ctx.documents = record.documents.as_ref();
            ctx.moe = moe.as_mut();
            model.layers[record.layer].forward(x.clone(), &mut ctx)
        };
        let mut objective = (y * Tensor::from_inner(dy)).sum();
        if let (Some(losses), Some((d_balance, d_z))) = (moe, aux_grads) {
            for (value, grad) in [(losses.balance_loss, d_balance), (losses.z_loss, d_z)] {
                if let (Some(value), Some(grad)) = (value, grad) {
                    objective = objective + value * Tensor::from_inner(grad.clone());
                }
            }
        }
        let grads = objective.backward();
        let dx = x.grad(&grads);
        accumulator.accumulate(params, GradientsParams::from_grads(grads, params));
        dx
    }
}

/// The gradients of a checkpointed MoE block's balance and z-loss leaves.
type AuxGrads<B> = (
    Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>,
    Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>,
);
