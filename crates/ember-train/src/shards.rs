//! Batch sharding over CPU cores.
//!
//! With `train.batch_shards = N > 1`, each micro-batch is cut into `N` groups of rows whose
//! forward and backward passes run at the same time, one thread each, and whose gradients
//! are summed (weighted by their share of the rows): data parallelism inside one process.
//! Every op of a shard runs single-threaded (each shard thread is the only worker of its
//! own rayon pool), so the cores never wait on each other inside an op. At the sizes of
//! small models this beats splitting every op over the cores, where each op is too short
//! to pay for waking and joining the other threads.
//!
//! Each shard differentiates its own copy of the parameters: leaves with fresh autodiff
//! node ids over the same tensor data and the same [`ParamId`](burn::module::ParamId)s.
//! burn keeps graphs that share a node under one lock, so shards that shared the model's
//! own leaves would run their backward passes one after the other.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use ember_data::Batch;

use crate::config::ConfigError;

/// A micro-batch that shards can split: its rows in contiguous groups, and the weight
/// each group carries in the micro-batch's mean loss.
pub(crate) trait Rows: Sized + Sync {
    /// At most `parts` non-empty groups of rows, in row order.
    fn split(&self, parts: usize) -> Vec<Self>;
    /// What the loss averages over: rows for [`Batch`], trained targets for a
    /// fine-tuning batch.
    fn weight(&self) -> f64;
}

impl Rows for Batch {
    fn split(&self, parts: usize) -> Vec<Self> {
        Batch::split(self, parts)
    }
    /// Rows; packed rows: the targets the loss covers (token-weighted accumulation).
    fn weight(&self) -> f64 {
        match self.documents {
            Some(_) => self
                .targets
                .iter()
                .filter(|&&t| t != ember_data::sft::IGNORE)
                .count() as f64,
            None => self.batch as f64,
        }
    }
}

/// The worker pools of a sharded run (none when `shards == 1`).
pub(crate) struct Shards {
    pools: Vec<rayon::ThreadPool>,
}

impl Shards {
    /// The shards of a run with `train.batch_shards = requested` and its count: 0 picks
    /// one per core (at most one per row) on CPU backends when nothing draws dropout
    /// masks (shards draw from one generator in no fixed order), else 1.
    pub(crate) fn for_run(
        requested: usize,
        batch_size: usize,
        cpu_backend: bool,
        no_dropout: bool,
    ) -> Result<(Self, usize), ConfigError> {
        let n = match requested {
            // rayon's pool: the cores, or RAYON_NUM_THREADS (a rank's share of them).
            0 if cpu_backend && no_dropout => rayon::current_num_threads().min(batch_size),
            0 => 1,
            n => n,
        };
        let shards = Self::new(n).map_err(|e| {
            ConfigError(format!(
                "train.batch_shards: cannot start {n} shard threads: {e}"
            ))
        })?;
        Ok((shards, n))
    }

    /// `shards` groups of rows per micro-batch; 1 runs the whole micro-batch on the calling
    /// thread, with every op using all of rayon's threads.
    pub(crate) fn new(shards: usize) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pools = if shards > 1 {
            (0..shards)
                .map(|i| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(move |_| format!("ember-shard-{i}"))
                        .build()
                })
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        Ok(Self { pools })
    }

    /// Runs `f(model, rows, weight)` for each group of `batch`'s rows, where `weight` is the
    /// group's share of the batch's [`Rows::weight`], and returns the results in row order.
    ///
    /// Sharded, each call gets its own differentiable copy of `model` (see the module
    /// docs), so gradients must be read through parameter ids, as
    /// [`GradientsParams::from_grads`](burn::optim::GradientsParams::from_grads) does.
    pub(crate) fn run<B, M, R, T, F>(&self, model: &M, batch: &R, f: F) -> Vec<T>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B> + Sync,
        R: Rows,
        T: Send,
        F: Fn(&M, &R, f64) -> T + Sync,
    {
        if self.pools.is_empty() {
            return vec![f(model, batch, 1.0)];
        }
        let parts = batch.split(self.pools.len());
        let total = batch.weight();
        let shard = |pool: &rayon::ThreadPool, part: &R| {
            pool.install(|| {
                let copy = M::from_inner(model.valid());
                let share = if total > 0.0 {
                    part.weight() / total
                } else {
                    0.0
                };
                f(&copy, part, share)
            })
        };
        std::thread::scope(|scope| {
            let others: Vec<_> = parts[1..]
                .iter()
                .zip(&self.pools[1..])
                .map(|(part, pool)| scope.spawn(move || shard(pool, part)))
                .collect();
            let mut results = vec![shard(&self.pools[0], &parts[0])];
            for handle in others {
                match handle.join() {
                    Ok(result) => results.push(result),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            results
        })
    }
}
