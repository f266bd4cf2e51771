//! Data-parallel training over processes: the [`Collective`] seam, its MPI
//! implementation (`mpi` feature) and an in-process one, the bucketed gradient
//! all-reduce, and what the ranks agree on at start-up.
//!
//! How a run uses them (`trainer::ranks`): every rank draws the same global batches
//! from the same seeded sampler and keeps its contiguous share of each micro-batch's
//! rows; its gradients are weighted by that share, so summing them over ranks gives the
//! single-process gradient of the global batch. Every rank then clips and applies the
//! same update; rank 0 alone evaluates and writes metrics and checkpoints.

mod collective;
mod gradients;
mod local;
#[cfg(feature = "mpi")]
mod mpi;
mod startup;

pub use collective::{Collective, CollectiveError};
pub use gradients::{
    DEFAULT_BUCKET_BYTES, ReduceStats, all_reduce_gradients, broadcast_parameters, reduction_order,
};
pub use local::LocalGroup;
#[cfg(feature = "mpi")]
pub use mpi::MpiCollective;
pub use startup::{RankIdentity, check_identity, data_fingerprint, share_checkpoint};

/// Whether this process was started by an MPI launcher (OpenMPI's, MPICH's or any PMI
/// or PMIx one).
pub fn launched_by_mpi() -> bool {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some())
}

/// A collective shared between the trainer and its caller (who keeps it to end the job
/// with [`Collective::abort`] when the run fails).
pub type SharedCollective = std::sync::Arc<std::sync::Mutex<dyn Collective>>;

/// Calls [`Collective::keep_alive`] every 200 ms from a thread, whenever no collective is
/// in progress, until the returned guard is dropped: a rank busy between collectives
/// (rank 0 evaluating or saving a checkpoint) still answers the others' liveness probes.
pub fn spawn_keep_alive(collective: SharedCollective) -> KeepAlive {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ember-keep-alive".into())
        .spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(200));
                // A collective in progress answers probes itself.
                if let Ok(mut c) = collective.try_lock() {
                    c.keep_alive();
                }
            }
        })
        .ok();
    KeepAlive { stop, thread }
}

/// Stops [`spawn_keep_alive`]'s thread (and waits for it) when dropped.
pub struct KeepAlive {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a data-parallel run is given (`TrainExtras::data_parallel`).
pub struct DataParallel {
    /// The ranks; a world of 1 trains as a single process.
    pub collective: SharedCollective,
    /// The world size the user asked for (`--nproc`), checked against the job's.
    pub expected_world: Option<usize>,
}

impl DataParallel {
    /// `collective`'s ranks, with no expected world size.
    pub fn new(collective: SharedCollective) -> Self {
        Self {
            collective,
            expected_world: None,
        }
    }
}
