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
