//! [`MpiCollective`]: the ranks of an MPI job (`mpirun -np N ember train …`), through the
//! `mpi` crate (rsmpi) over the system's OpenMPI or MPICH.
//!
//! Every collective is MPI's non-blocking form, polled against a deadline: when it does
//! not complete in time, this rank probes the others (a point-to-point message each),
//! names the ones that stay silent, prints that, and ends the job through `MPI_Abort`. A
//! rank answers probes while it polls a collective of its own and, between collectives
//! (rank 0 evaluating or saving), from [`MpiCollective::keep_alive`], which
//! [`spawn_keep_alive`] calls from a thread: a busy rank is never taken for a lost one,
//! and when every rank answers the wait goes on. A rank that dies is noticed sooner by
//! the launcher, which ends the job naming it ("mpirun noticed that process rank 1 …").

use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::request::{Request, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::collective::{Collective, CollectiveError};

/// Tags of the liveness probe and its answer (user tags, below MPI's guaranteed 32767).
const PROBE: mpi::Tag = 30_001;
const ANSWER: mpi::Tag = 30_002;
/// How long a timed-out rank waits for the answers to its probes.
const PROBE_WAIT: Duration = Duration::from_secs(2);
/// The most elements one MPI call moves (its counts are C ints).
const MAX_COUNT: usize = 1 << 28;

/// This process's place in an MPI job.
pub struct MpiCollective {
    // Dropping the universe finalizes MPI: it lives as long as the collective.
    _universe: Universe,
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    timeout: Duration,
    /// Collectives started so far (what a probe's answer carries).
    calls: u64,
}

impl MpiCollective {
    /// Joins the job: initializes MPI (calls are serialized by the trainer's thread). A
    /// collective that waits longer than `timeout` ends the job.
    pub fn init(timeout: Duration) -> Result<Self, CollectiveError> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| {
                CollectiveError::Failed("MPI is already initialized in this process".into())
            })?;
        if matches!(threading, mpi::Threading::Single | mpi::Threading::Funneled) {
            // Still usable from the thread that initialized it, which is the one that
            // trains in `ember train`; said once, for library callers.
            eprintln!(
                "warning: this MPI library grants {threading:?} threading, not Serialized: call the collectives from the thread that joined the job"
            );
        }
        let world = universe.world();
        Ok(Self {
            rank: world.rank() as usize,
            size: world.size() as usize,
            world,
            _universe: universe,
            timeout,
            calls: 0,
        })
    }

    /// Waits for `request`, answering probes meanwhile; past the deadline, names the
    /// silent ranks and aborts the job (the request's buffers cannot be given back).
    fn wait<'a, D: ?Sized, S: Scope<'a>>(&self, mut request: Request<'a, D, S>, what: &str) {
        let mut start = Instant::now();
        let mut polls = 0u32;
        loop {
            match request.test() {
                Ok(_) => return,
                Err(pending) => request = pending,
            }
            self.answer_probes();
            if start.elapsed() > self.timeout {
                let silent = self.silent_ranks();
                if silent.is_empty() {
                    // Every rank is alive (a slow step, rank 0 saving): wait on.
                    start = Instant::now();
                    continue;
                }
                let err = CollectiveError::Timeout {
                    what: what.to_string(),
                    after_s: self.timeout.as_secs_f64(),
                    silent,
                };
                eprintln!(
                    "error: rank {} of {}: {err}; ending the job",
                    self.rank, self.size
                );
                self.world.abort(1);
            }
            // Spin briefly (a loopback collective takes microseconds), then back off.
            polls += 1;
            if polls < 2_000 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(if polls < 4_000 { 50 } else { 500 }));
            }
        }
    }

    /// Answers every probe that has arrived with this rank's collective count.
    fn answer_probes(&self) {
        while let Some((message, status)) = self
            .world
            .any_process()
            .immediate_matched_probe_with_tag(PROBE)
        {
            let (_asker_calls, _) = message.matched_receive::<u64>();
            self.world
                .process_at_rank(status.source_rank())
                .send_with_tag(&self.calls, ANSWER);
        }
    }

    /// Probes every other rank and returns those that do not answer within
    /// [`PROBE_WAIT`].
    fn silent_ranks(&self) -> Vec<usize> {
        let mut answered = vec![false; self.size];
        answered[self.rank] = true;
        for peer in (0..self.size).filter(|&p| p != self.rank) {
            self.world
                .process_at_rank(peer as i32)
                .send_with_tag(&self.calls, PROBE);
        }
        let start = Instant::now();
        while start.elapsed() < PROBE_WAIT && answered.iter().any(|a| !a) {
            self.answer_probes();
            while let Some((message, status)) = self
                .world
                .any_process()
                .immediate_matched_probe_with_tag(ANSWER)
            {
                let _ = message.matched_receive::<u64>();
                answered[status.source_rank() as usize] = true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        (0..self.size).filter(|&r| !answered[r]).collect()
    }

    fn all_reduce<T>(&mut self, buf: &mut [T], what: &str)
    where
        T: Equivalence + Copy,
    {
        // MPI counts are C ints: long buffers go in pieces.
        for piece in buf.chunks_mut(MAX_COUNT) {
            self.calls += 1;
            let send = piece.to_vec();
            mpi::request::scope(|scope| {
                let request = self.world.immediate_all_reduce_into(
                    scope,
                    &send[..],
                    piece,
                    SystemOperation::sum(),
                );
                self.wait(request, what);
            });
        }
    }

    fn broadcast<T: Equivalence>(&mut self, buf: &mut [T], what: &str) {
        for piece in buf.chunks_mut(MAX_COUNT) {
            self.calls += 1;
            let root = self.world.process_at_rank(0);
            mpi::request::scope(|scope| {
                let request = root.immediate_broadcast_into(scope, piece);
                self.wait(request, what);
            });
        }
    }

    fn all_gather<T: Equivalence + Copy + Default>(&mut self, mine: &[T], what: &str) -> Vec<T> {
        self.calls += 1;
        let mut all = vec![T::default(); mine.len() * self.size];
        mpi::request::scope(|scope| {
            let request = self
                .world
                .immediate_all_gather_into(scope, mine, &mut all[..]);
            self.wait(request, what);
        });
        all
    }
}

// SAFETY: MPI is initialized for serialized use from any thread (`init` asks for
// MPI_THREAD_SERIALIZED), and every call goes through `&mut self`, which a
// `SharedCollective`'s mutex hands to one thread at a time.
unsafe impl Send for MpiCollective {}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.size
    }

    fn all_reduce_sum_f32(&mut self, buf: &mut [f32], what: &str) -> Result<(), CollectiveError> {
        self.all_reduce(buf, what);
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, buf: &mut [f64], what: &str) -> Result<(), CollectiveError> {
        self.all_reduce(buf, what);
        Ok(())
    }

    fn broadcast_f32(&mut self, buf: &mut [f32], what: &str) -> Result<(), CollectiveError> {
        self.broadcast(buf, what);
        Ok(())
    }

    fn broadcast_bytes(&mut self, buf: &mut Vec<u8>, what: &str) -> Result<(), CollectiveError> {
        let mut len = [buf.len() as u64];
        self.broadcast(&mut len, what);
        buf.resize(len[0] as usize, 0);
        self.broadcast(buf, what);
        Ok(())
    }

    fn all_gather_bytes(
        &mut self,
        mine: &[u8],
        what: &str,
    ) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let lens = self.all_gather(&[mine.len() as u64], what);
        let widest = lens.iter().copied().max().unwrap_or(0) as usize;
        if widest == 0 {
            return Ok(vec![Vec::new(); self.size]);
        }
        let mut padded = mine.to_vec();
        padded.resize(widest, 0);
        let all = self.all_gather(&padded, what);
        Ok(all
            .chunks(widest)
            .zip(&lens)
            .map(|(chunk, &len)| chunk[..len as usize].to_vec())
            .take(self.size)
            .collect())
    }

    fn abort(&mut self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn keep_alive(&mut self) {
        self.answer_probes();
    }
}
