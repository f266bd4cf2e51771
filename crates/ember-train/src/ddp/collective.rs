//! The seam between the trainer and a communication library: the few collectives
//! data-parallel training needs, over ranks `0..world`.

use std::fmt;

/// Why a collective did not complete.
#[derive(Debug, Clone, PartialEq)]
pub enum CollectiveError {
    /// `what` waited `after_s` seconds; `silent` are the ranks that did not answer a
    /// liveness probe meanwhile (stopped, stuck elsewhere, or lost).
    Timeout {
        what: String,
        after_s: f64,
        silent: Vec<usize>,
    },
    /// The ranks disagree on something they must share (sizes, configuration, data).
    Mismatch(String),
    /// The communication library reported an error.
    Failed(String),
}

impl fmt::Display for CollectiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout {
                what,
                after_s,
                silent,
            } => {
                write!(f, "{what} waited {after_s:.0} s for the other ranks")?;
                match silent.as_slice() {
                    [] => write!(
                        f,
                        "; every rank answered a liveness probe, so one is stuck in another collective"
                    ),
                    [one] => write!(f, "; rank {one} did not answer (stopped, stuck or lost)"),
                    many => {
                        let names: Vec<String> = many.iter().map(usize::to_string).collect();
                        write!(
                            f,
                            "; ranks {} did not answer (stopped, stuck or lost)",
                            names.join(", ")
                        )
                    }
                }
            }
            Self::Mismatch(message) | Self::Failed(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for CollectiveError {}

/// Collectives over a fixed group of ranks. Every rank must call the same collectives
/// in the same order with buffers of the same length; `what` names the call in errors
/// ("the gradient all-reduce of step 12").
///
/// Implementations: [`LocalGroup`](super::LocalGroup) (threads of one process: tests,
/// benchmarks) and, with the `mpi` feature, [`MpiCollective`](super::MpiCollective).
pub trait Collective: Send {
    /// This process's rank, `0..world`.
    fn rank(&self) -> usize;
    /// How many ranks take part.
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank by the element-wise sum of every rank's `buf`. The
    /// result is the same bits on every rank.
    fn all_reduce_sum_f32(&mut self, buf: &mut [f32], what: &str) -> Result<(), CollectiveError>;
    /// [`Collective::all_reduce_sum_f32`] in f64 (losses and metrics).
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64], what: &str) -> Result<(), CollectiveError>;
    /// Rank 0's `buf` on every rank (the lengths must agree).
    fn broadcast_f32(&mut self, buf: &mut [f32], what: &str) -> Result<(), CollectiveError>;
    /// Rank 0's bytes on every rank, whatever their length elsewhere.
    fn broadcast_bytes(&mut self, buf: &mut Vec<u8>, what: &str) -> Result<(), CollectiveError>;
    /// Every rank's bytes, in rank order.
    fn all_gather_bytes(
        &mut self,
        mine: &[u8],
        what: &str,
    ) -> Result<Vec<Vec<u8>>, CollectiveError>;
    /// Ends every rank of the job now (after this rank has reported an error), with exit
    /// status `code` where the library lets this rank choose it.
    fn abort(&mut self, code: i32) -> !;
    /// Between collectives: tells ranks that wait on this one that it is alive (see
    /// [`spawn_keep_alive`](super::spawn_keep_alive)); nothing by default.
    fn keep_alive(&mut self) {}
}
