//! [`LocalGroup`]: ranks that are threads of one process, for tests, benchmarks and
//! library users who want the data-parallel code path without MPI.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::collective::{Collective, CollectiveError};

/// One rank of a group of threads (see [`LocalGroup::new`]).
pub struct LocalGroup {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
    timeout: Duration,
}

struct Shared {
    state: Mutex<Exchange>,
    arrived: Condvar,
}

/// One round of [`LocalGroup::exchange`] at a time: who has arrived with what, and the
/// last completed round's contributions.
struct Exchange {
    round: u64,
    slots: Vec<Option<Vec<u8>>>,
    last: Arc<Vec<Vec<u8>>>,
    /// A rank timed out: every later collective fails.
    broken: bool,
}

impl LocalGroup {
    /// `world` ranks, one per thread that will use it; a collective waits at most
    /// `timeout` for the others.
    pub fn new(world: usize, timeout: Duration) -> Vec<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(Exchange {
                round: 0,
                slots: vec![None; world],
                last: Arc::new(Vec::new()),
                broken: false,
            }),
            arrived: Condvar::new(),
        });
        (0..world)
            .map(|rank| Self {
                rank,
                world,
                shared: shared.clone(),
                timeout,
            })
            .collect()
    }

    /// Every rank's `mine`, in rank order, once all have arrived.
    fn exchange(&mut self, mine: &[u8], what: &str) -> Result<Arc<Vec<Vec<u8>>>, CollectiveError> {
        let poisoned = || CollectiveError::Failed(format!("{what}: another rank panicked"));
        let mut state = self.shared.state.lock().map_err(|_| poisoned())?;
        if state.broken {
            return Err(CollectiveError::Failed(format!(
                "{what}: an earlier collective of this group timed out"
            )));
        }
        let round = state.round;
        state.slots[self.rank] = Some(mine.to_vec());
        if state.slots.iter().all(Option::is_some) {
            let all = state.slots.iter_mut().map(|s| s.take().unwrap()).collect();
            state.last = Arc::new(all);
            state.round += 1;
            self.shared.arrived.notify_all();
            return Ok(state.last.clone());
        }
        let deadline = Instant::now() + self.timeout;
        while state.round == round {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let silent = (0..self.world)
                    .filter(|&r| state.slots[r].is_none())
                    .collect();
                // The group is broken: a late rank must not complete this round with the
                // contributions of ranks that have given up on it.
                state.broken = true;
                return Err(CollectiveError::Timeout {
                    what: what.to_string(),
                    after_s: self.timeout.as_secs_f64(),
                    silent,
                });
            }
            state = self
                .shared
                .arrived
                .wait_timeout(state, left)
                .map_err(|_| poisoned())?
                .0;
        }
        Ok(state.last.clone())
    }

    /// Every rank's `mine` (equal lengths), in rank order.
    fn gather_equal(
        &mut self,
        mine: &[u8],
        what: &str,
    ) -> Result<Arc<Vec<Vec<u8>>>, CollectiveError> {
        let all = self.exchange(mine, what)?;
        if let Some(r) = all.iter().position(|b| b.len() != mine.len()) {
            return Err(CollectiveError::Mismatch(format!(
                "{what}: rank {r} sent {} bytes, rank {} {}",
                all[r].len(),
                self.rank,
                mine.len()
            )));
        }
        Ok(all)
    }
}

/// Sums `parts` (little-endian words of `N` bytes) into `out` in rank order, so every
/// rank computes the same bits.
fn sum_into<const N: usize, T: Copy + std::ops::Add<Output = T>>(
    out: &mut [T],
    parts: &[Vec<u8>],
    decode: impl Fn([u8; N]) -> T,
) {
    for (i, x) in out.iter_mut().enumerate() {
        let word = |part: &Vec<u8>| decode(part[i * N..(i + 1) * N].try_into().unwrap());
        *x = parts[1..]
            .iter()
            .fold(word(&parts[0]), |acc, p| acc + word(p));
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum_f32(&mut self, buf: &mut [f32], what: &str) -> Result<(), CollectiveError> {
        let mine: Vec<u8> = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
        let all = self.gather_equal(&mine, what)?;
        sum_into(buf, &all, f32::from_le_bytes);
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, buf: &mut [f64], what: &str) -> Result<(), CollectiveError> {
        let mine: Vec<u8> = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
        let all = self.gather_equal(&mine, what)?;
        sum_into(buf, &all, f64::from_le_bytes);
        Ok(())
    }

    fn broadcast_f32(&mut self, buf: &mut [f32], what: &str) -> Result<(), CollectiveError> {
        let mine: Vec<u8> = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
        let all = self.gather_equal(&mine, what)?;
        for (x, word) in buf.iter_mut().zip(all[0].chunks_exact(4)) {
            *x = f32::from_le_bytes(word.try_into().unwrap());
        }
        Ok(())
    }

    fn broadcast_bytes(&mut self, buf: &mut Vec<u8>, what: &str) -> Result<(), CollectiveError> {
        let all = self.exchange(buf, what)?;
        buf.clone_from(&all[0]);
        Ok(())
    }

    fn all_gather_bytes(
        &mut self,
        mine: &[u8],
        what: &str,
    ) -> Result<Vec<Vec<u8>>, CollectiveError> {
        Ok(self.exchange(mine, what)?.as_ref().clone())
    }

    fn abort(&mut self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_threads<T: Send>(world: usize, f: impl Fn(LocalGroup) -> T + Sync) -> Vec<T> {
        let ranks = LocalGroup::new(world, Duration::from_secs(10));
        std::thread::scope(|s| {
            let handles: Vec<_> = ranks.into_iter().map(|g| s.spawn(|| f(g))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn all_reduce_sums_in_rank_order_and_broadcast_takes_rank_0() {
        let out = on_threads(3, |mut g| {
            let r = g.rank() as f32;
            let mut a = vec![r, 10.0 * r, 0.1];
            g.all_reduce_sum_f32(&mut a, "sum").unwrap();
            let mut b = vec![r + 1.0; 2];
            g.broadcast_f32(&mut b, "bcast").unwrap();
            let mut bytes = vec![g.rank() as u8; g.rank() + 1];
            g.broadcast_bytes(&mut bytes, "bytes").unwrap();
            let gathered = g.all_gather_bytes(&[g.rank() as u8], "gather").unwrap();
            (a, b, bytes, gathered)
        });
        for (a, b, bytes, gathered) in out {
            assert_eq!(a, vec![3.0, 30.0, (0.1f32 + 0.1) + 0.1]);
            assert_eq!(b, vec![1.0, 1.0]);
            assert_eq!(bytes, vec![0u8]);
            assert_eq!(gathered, vec![vec![0u8], vec![1], vec![2]]);
        }
    }

    #[test]
    fn a_rank_that_never_arrives_is_named_after_the_timeout() {
        let mut ranks = LocalGroup::new(3, Duration::from_millis(200));
        let _absent = ranks.pop();
        let out = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .into_iter()
                .map(|mut g| s.spawn(move || g.all_reduce_sum_f32(&mut [1.0], "the test reduce")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        for result in out {
            let err = result.unwrap_err();
            assert_eq!(
                err,
                CollectiveError::Timeout {
                    what: "the test reduce".into(),
                    after_s: 0.2,
                    silent: vec![2]
                }
            );
            assert!(err.to_string().contains("rank 2 did not answer"), "{err}");
        }
    }

    #[test]
    fn different_lengths_are_a_mismatch_on_every_rank() {
        let out = on_threads(2, |mut g| {
            let mut buf = vec![0.0f32; 1 + g.rank()];
            g.all_reduce_sum_f32(&mut buf, "grads").unwrap_err()
        });
        for err in out {
            assert!(matches!(err, CollectiveError::Mismatch(_)), "{err}");
        }
    }
}
