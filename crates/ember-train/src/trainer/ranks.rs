//! A run's place among data-parallel ranks ([`TrainExtras::collective`]
//! (super::TrainExtras)): what differs from a single-process run, in one place.
//!
//! - Rank 0 runs in `--out`; the others in a private temporary directory (their token
//!   cache, their copy of rank 0's checkpoint), write nothing the user sees, and skip
//!   evaluation.
//! - Before the first step: rank 0's checkpoint (when resuming) goes to every rank, the
//!   ranks check they were given the same run, and rank 0's parameters are broadcast.
//! - Each step: every rank draws the same global micro-batches and keeps its share of
//!   their rows; the step's losses, metrics and gradients are summed over ranks.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use ember_data::TokenSplits;

use super::error::TrainError;
use crate::config::{ConfigError, TrainConfig};
use crate::ddp::{self, Collective, CollectiveError, DataParallel, RankIdentity, SharedCollective};
use crate::shards::Rows;

pub(crate) struct Ranks {
    collective: SharedCollective,
    pub(crate) rank: usize,
    pub(crate) world: usize,
    bucket_bytes: usize,
    /// `--nproc`, when the caller was told a world size to expect.
    expected_world: Option<usize>,
    /// Ranks above 0: their run directory, removed when the run ends.
    private: Option<tempfile::TempDir>,
}

impl Ranks {
    /// The run's ranks; `None` for a single process (a world of 1).
    pub(crate) fn new(data_parallel: Option<DataParallel>, bucket_mb: Option<f64>) -> Option<Self> {
        let DataParallel {
            collective,
            expected_world,
        } = data_parallel?;
        let bucket_bytes = bucket_mb.map_or(ddp::DEFAULT_BUCKET_BYTES, |mb| {
            (mb * 1024.0 * 1024.0) as usize
        });
        let (rank, world) = {
            let c = lock(&collective);
            (c.rank(), c.world())
        };
        if world <= 1 && expected_world.is_none_or(|n| n == world) {
            return None;
        }
        Some(Self {
            collective,
            rank,
            world,
            bucket_bytes,
            expected_world,
            private: None,
        })
    }

    /// What a rank mixes into its dropout seeds: each rank's rows get masks of their own
    /// (rank 0's, and a single process's, are unchanged).
    pub(crate) fn seed_salt(ranks: Option<&Self>) -> u64 {
        ranks.map_or(0, |r| (r.rank as u64).wrapping_mul(0xd1b5_4a32_d192_ed03))
    }

    pub(crate) fn leads(&self) -> bool {
        self.rank == 0
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn Collective) -> Result<T, CollectiveError>,
    ) -> Result<T, TrainError> {
        let mut c = lock(&self.collective);
        Ok(f(&mut *c)?)
    }

    /// What the data-parallel path cannot run, refused on every rank alike.
    pub(super) fn refuse_unsupported(&self, config: &TrainConfig) -> Result<(), ConfigError> {
        let t = &config.train;
        if t.objective == crate::objective::ObjectiveKind::Contrastive {
            return Err(ConfigError(format!(
                "train.objective = \"contrastive\": its in-batch negatives would be split over the {} ranks; train contrastive runs in one process",
                self.world
            )));
        }
        self.refuse_small_batch(t.batch_size)
    }

    /// A micro-batch of `batch_size` rows must give every rank one.
    pub(crate) fn refuse_small_batch(&self, batch_size: usize) -> Result<(), ConfigError> {
        if batch_size < self.world {
            return Err(ConfigError(format!(
                "train.batch_size = {batch_size}: fewer rows than the {} ranks; every rank needs at least one row of each micro-batch",
                self.world
            )));
        }
        Ok(())
    }

    /// Where this rank runs: the checkpoint it resumes from (rank 0's `--resume`,
    /// resolved by `open` to its directory and copied to the others) and, above rank 0,
    /// the private run directory that replaces `--out`.
    pub(crate) fn place(
        &mut self,
        resume: Option<&Path>,
        open: impl FnOnce(&Path) -> Result<PathBuf, TrainError>,
    ) -> Result<(Option<PathBuf>, Option<PathBuf>), TrainError> {
        let rank0_checkpoint = match (self.leads(), resume) {
            (true, Some(path)) => Some(open(path)?),
            _ => None,
        };
        let resume = self.share_resume(rank0_checkpoint.as_deref())?;
        let private_out = match self.leads() {
            true => None,
            false => Some(self.private_run_dir()?),
        };
        Ok((resume, private_out))
    }

    /// Ranks above 0: the run directory they work in instead of `--out`.
    fn private_run_dir(&mut self) -> Result<PathBuf, TrainError> {
        Ok(self.private_dir()?.join("run"))
    }

    fn private_dir(&mut self) -> Result<&Path, TrainError> {
        if self.private.is_none() {
            let dir = tempfile::Builder::new()
                .prefix(&format!("ember-rank{}-", self.rank))
                .tempdir()
                .map_err(|e| {
                    TrainError::Ranks(CollectiveError::Failed(format!(
                        "rank {}: cannot make its private run directory: {e}",
                        self.rank
                    )))
                })?;
            self.private = Some(dir);
        }
        Ok(self.private.as_ref().unwrap().path())
    }

    /// The checkpoint every rank resumes from: rank 0's `dir`, copied to the others.
    fn share_resume(&mut self, dir: Option<&Path>) -> Result<Option<PathBuf>, TrainError> {
        let into = match self.leads() {
            true => PathBuf::new(),
            false => self.private_dir()?.join("resume"),
        };
        let shared = {
            let mut c = lock(&self.collective);
            ddp::share_checkpoint(&mut *c, dir, &into)
        };
        shared.map_err(|e| TrainError::Ranks(CollectiveError::Failed(e)))
    }

    /// Refuses ranks given different runs, then sets every parameter to rank 0's.
    pub(super) fn agree<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        config: &TrainConfig,
        splits: &TokenSplits,
        model: M,
    ) -> Result<M, TrainError> {
        let config = toml::to_string(config).unwrap_or_default();
        let data = ddp::data_fingerprint(&[&splits.train, &splits.val]);
        self.agree_on::<B, M>(config, data, None, model, false)
    }

    /// [`Self::agree`] for any run: its configuration as TOML, a fingerprint of its data,
    /// and of a base model every rank loads itself (`trainable_only`: then only the
    /// trainable parameters are broadcast).
    pub(crate) fn agree_on<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        config: String,
        data: u64,
        base: Option<String>,
        model: M,
        trainable_only: bool,
    ) -> Result<M, TrainError> {
        let infos = ember_nn::param_infos::<B, _>(&model);
        let params = infos
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        let trainable = ddp::reduction_order::<B, _>(&model)
            .iter()
            .map(|(_, len)| len)
            .sum();
        let identity = RankIdentity {
            config,
            data,
            params,
            trainable,
            expected_world: self.expected_world,
            base,
        };
        self.with(|c| ddp::check_identity(c, &identity))?;
        let bucket_bytes = self.bucket_bytes;
        self.with(|c| ddp::broadcast_parameters(model, c, bucket_bytes, trainable_only))
    }

    /// This rank's contiguous share of `batch`'s rows (the shares of ranks `0..world` in
    /// order make up the batch); a single process's is the whole batch.
    pub(crate) fn own_rows<'b, R: Rows + Clone>(
        ranks: Option<&Self>,
        batch: &'b R,
    ) -> std::borrow::Cow<'b, R> {
        match ranks {
            Some(r) => std::borrow::Cow::Owned(batch.split(r.world).swap_remove(r.rank)),
            None => std::borrow::Cow::Borrowed(batch),
        }
    }

    /// Sums `values` (a step's weighted losses and metrics) over the ranks.
    pub(crate) fn sum(&self, values: &mut [f64], step: usize) -> Result<(), TrainError> {
        let what = format!("the loss all-reduce of step {}", step + 1);
        self.with(|c| c.all_reduce_sum_f64(values, &what))
    }

    /// Gives `metrics` every name any rank has (0 where this rank has none), so that
    /// their values line up in [`Self::sum`].
    pub(crate) fn align_names(
        &self,
        metrics: &mut std::collections::BTreeMap<String, f64>,
        step: usize,
    ) -> Result<(), TrainError> {
        let mine = metrics.keys().cloned().collect::<Vec<_>>().join("\n");
        let what = format!("the metric names of step {}", step + 1);
        let all = self.with(|c| c.all_gather_bytes(mine.as_bytes(), &what))?;
        for names in &all {
            for name in String::from_utf8_lossy(names).split('\n') {
                if !name.is_empty() {
                    metrics.entry(name.to_string()).or_insert(0.0);
                }
            }
        }
        Ok(())
    }

    /// Sums a step's gradients over the ranks (see [`ddp::all_reduce_gradients`]).
    /// Returns how long it took, ms.
    pub(crate) fn sum_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        grads: &mut GradientsParams,
        step: usize,
    ) -> Result<f64, TrainError> {
        let what = format!("the gradient all-reduce of step {}", step + 1);
        let bucket_bytes = self.bucket_bytes;
        let start = std::time::Instant::now();
        self.with(|c| ddp::all_reduce_gradients(model, grads, c, bucket_bytes, &what))?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }

    /// Whether `flag` holds on any rank (a stop asked for on rank 0's dashboard).
    pub(super) fn any(&self, flag: bool, step: usize) -> Result<bool, TrainError> {
        let mut value = [f64::from(u8::from(flag))];
        let what = format!("the stop check before step {}", step + 1);
        self.with(|c| c.all_reduce_sum_f64(&mut value, &what))?;
        Ok(value[0] > 0.0)
    }
}

fn lock(collective: &SharedCollective) -> std::sync::MutexGuard<'_, dyn Collective + 'static> {
    // A rank that panicked mid-collective leaves the group unusable either way.
    collective
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
