//! [`Contrastive`]: InfoNCE with in-batch negatives on pooled hidden states of
//! `{"anchor", "positive"}` pairs, and the held-out retrieval accuracy it reports.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use ember_data::{Batch, PairSet};
use ember_nn::{ForwardOptions, FusedBackend, Transformer};
use serde::{Deserialize, Serialize};

use super::{Objective, ObjectiveBatch, ObjectiveOutput};

/// How a text's hidden states become one vector (`train.contrastive.pooling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean over the text's tokens (sentence-transformers' default).
    #[default]
    Mean,
    /// The last token's state (what a causal model has read the whole text at).
    Last,
}

/// `[train.contrastive]`: the settings of `train.objective = "contrastive"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContrastiveConfig {
    /// The softmax temperature `τ` of the cosine similarities (SimCSE: 0.05).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    #[serde(default)]
    pub pooling: Pooling,
}

fn default_temperature() -> f64 {
    0.05
}

impl Default for ContrastiveConfig {
    fn default() -> Self {
        Self {
            temperature: default_temperature(),
            pooling: Pooling::Mean,
        }
    }
}

/// InfoNCE (van den Oord et al.; SimCSE's supervised form): each anchor's positive is
/// told apart from the batch's other positives,
/// `loss = mean_i −log softmax_j(cos(a_i, p_j) / τ)[i]`, on the pooled final hidden
/// states (after the final norm). Batches come from [`PairSet::sample`]: anchors in
/// the first half of the rows, their positives in the second. Logs
/// `objective.in_batch_accuracy`: the share of anchors whose most similar positive in
/// the batch is their own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contrastive {
    pub config: ContrastiveConfig,
}

impl<B: AutodiffBackend + FusedBackend> Objective<B> for Contrastive {
    fn loss(&self, model: &Transformer<B>, batch: ObjectiveBatch<'_, B>) -> ObjectiveOutput<B> {
        let mut hooks = batch.hooks;
        let options = ForwardOptions {
            checkpoints: batch.checkpoints,
            hooks: match hooks {
                Some(ref mut h) => Some(&mut **h),
                None => None,
            },
            ..Default::default()
        };
        let embeddings = pooled_embeddings(
            model,
            batch.inputs,
            batch.batch,
            self.config.pooling,
            options,
        );
        let (anchors, positives) = halves(embeddings);
        let nce = info_nce(anchors, positives, self.config.temperature);
        ObjectiveOutput {
            loss: nce.loss.clone(),
            train_loss: nce.loss,
            moe: None,
            metrics: vec![("in_batch_accuracy".to_string(), nce.accuracy)],
        }
    }
}

/// The unit-length pooled embedding of every row of a paired batch, `[rows, d_model]`.
///
/// - `inputs`: `[rows, block]` token ids, padded after each row's `batch.lengths`
///   tokens (causal attention keeps padding out of the real tokens' states).
pub fn pooled_embeddings<B: FusedBackend>(
    model: &Transformer<B>,
    inputs: Tensor<B, 2, Int>,
    batch: &Batch,
    pooling: Pooling,
    options: ForwardOptions<'_, B>,
) -> Tensor<B, 2> {
    let device = inputs.device();
    let [rows, block] = inputs.dims();
    let lengths = batch
        .lengths
        .as_ref()
        .expect("a contrastive batch carries its rows' lengths");
    // Each position's share of its row's vector: `[rows, block, 1]`.
    let mut weights = vec![0f32; rows * block];
    for (r, &len) in lengths.iter().enumerate() {
        let len = (len as usize).clamp(1, block);
        match pooling {
            Pooling::Mean => weights[r * block..r * block + len].fill(1.0 / len as f32),
            Pooling::Last => weights[r * block + len - 1] = 1.0,
        }
    }
    let weights = Tensor::<B, 3>::from_data(TensorData::new(weights, [rows, block, 1]), &device);
    let hidden = model.hidden(model.embed(inputs, 0), options);
    let [_, _, d_model] = hidden.dims();
    let pooled = (hidden * weights).sum_dim(1).reshape([rows, d_model]);
    l2_normalize(pooled)
}

/// Rows scaled to unit length, `[n, d]` (a zero row stays zero).
fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// The anchor rows (first half) and positive rows (second half), `[n, d]` each.
fn halves<B: Backend>(embeddings: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [rows, _] = embeddings.dims();
    let n = rows / 2;
    (
        embeddings.clone().narrow(0, 0, n),
        embeddings.narrow(0, n, n),
    )
}

/// InfoNCE over unit-length `anchors` and `positives` (`[n, d]`, row `i` a pair).
pub struct InfoNce<B: Backend> {
    /// `mean_i −log softmax_j(a_i·p_j / τ)[i]`, `[1]`.
    pub loss: Tensor<B, 1>,
    /// The share of rows `i` whose largest `a_i·p_j` is at `j = i`, `[1]`.
    pub accuracy: Tensor<B, 1>,
}

/// InfoNCE of `anchors` against `positives` at `temperature` (see [`InfoNce`]).
pub fn info_nce<B: Backend>(
    anchors: Tensor<B, 2>,
    positives: Tensor<B, 2>,
    temperature: f64,
) -> InfoNce<B> {
    let device = anchors.device();
    let [n, _] = anchors.dims();
    let logits = anchors
        .matmul(positives.transpose())
        .div_scalar(temperature);
    let log_probs = burn::tensor::activation::log_softmax(logits.clone(), 1);
    let eye = Tensor::<B, 2>::eye(n, &device);
    let loss = (log_probs * eye).sum().neg().div_scalar(n as f64);
    let own = Tensor::<B, 1, Int>::arange(0..n as i64, &device).reshape([n, 1]);
    let accuracy = logits.argmax(1).equal(own).float().mean();
    InfoNce { loss, accuracy }
}

/// Anchors scored against every positive at once, in blocks of this many anchors (a
/// `[block, n]` similarity matrix at a time).
const RETRIEVAL_BLOCK: usize = 256;

/// The share of rows `i` of `anchors` (`[n, d]`) whose most similar row of `positives`
/// (`[n, d]`) is row `i`.
fn retrieval_accuracy<B: Backend>(anchors: Tensor<B, 2>, positives: Tensor<B, 2>) -> f64 {
    let [n, _] = anchors.dims();
    let positives = positives.transpose();
    let mut hits = 0.0;
    for start in (0..n).step_by(RETRIEVAL_BLOCK) {
        let len = RETRIEVAL_BLOCK.min(n - start);
        let best = anchors
            .clone()
            .narrow(0, start, len)
            .matmul(positives.clone())
            .argmax(1);
        let own = Tensor::<B, 1, Int>::arange(start as i64..(start + len) as i64, &best.device())
            .reshape([len, 1]);
        hits += best.equal(own).float().sum().into_scalar().elem::<f64>();
    }
    hits / n.max(1) as f64
}

/// A model's contrastive validation: [`info_nce`] over the held-out pairs in batches
/// of the run's size, and retrieval over all of them at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairValidation {
    /// The held-out batches' InfoNCE, weighted by their pairs.
    pub loss: f64,
    /// The share of held-out anchors whose most similar held-out positive (of all of
    /// them, not just their batch's) is their own.
    pub retrieval_accuracy: f64,
}

/// [`PairValidation`] of `model` on `pairs.val`, in batches of `batch_size` pairs.
pub fn validate_pairs<B: FusedBackend>(
    model: &Transformer<B>,
    pairs: &PairSet,
    batch_size: usize,
    config: &ContrastiveConfig,
    device: &B::Device,
) -> PairValidation {
    let mut anchors = Vec::new();
    let mut positives = Vec::new();
    let (mut loss, mut weight) = (0.0, 0.0);
    for batch in pairs.val_batches(batch_size) {
        let inputs = Tensor::<B, 2, Int>::from_data(
            TensorData::new(batch.inputs.clone(), [batch.batch, batch.block]),
            device,
        );
        let embeddings =
            pooled_embeddings(model, inputs, &batch, config.pooling, Default::default());
        let (a, p) = halves(embeddings);
        let n = (batch.batch / 2) as f64;
        loss += n * info_nce(a.clone(), p.clone(), config.temperature)
            .loss
            .into_scalar()
            .elem::<f64>();
        weight += n;
        anchors.push(a);
        positives.push(p);
    }
    PairValidation {
        loss: loss / weight.max(1.0),
        retrieval_accuracy: retrieval_accuracy(Tensor::cat(anchors, 0), Tensor::cat(positives, 0)),
    }
}
