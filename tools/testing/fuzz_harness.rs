//! The seeded, time-bounded fuzz loop shared by the fuzz tests of several crates
//! (`crates/ember-hf/tests/fuzz.rs`, `crates/ember-train/tests/fuzz_config.rs`), included
//! with `#[path]`.
//!
//! Environment: `EMBER_FUZZ_SEED` (default fixed), `EMBER_FUZZ_ITERS` (multiplies every
//! target's iteration count, default 1), `EMBER_FUZZ_SECS` (each target's time budget in
//! seconds, default 8).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// The project's SplitMix64 with the draws a mutator needs.
pub struct Rng(ember_data::SplitMix64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// One edit of `text` at a random place: one of `pieces` inserted, up to `max_drop`
    /// bytes dropped, or one byte replaced by one of `alphabet`.
    pub fn splice(
        &mut self,
        text: &mut Vec<u8>,
        pieces: &[&[u8]],
        alphabet: &[u8],
        max_drop: usize,
    ) {
        let at = self.below(text.len() + 1);
        match self.below(3) {
            0 => {
                let piece = self.pick(pieces);
                text.splice(at..at, piece.iter().copied());
            }
            1 => {
                let end = (at + 1 + self.below(max_drop)).min(text.len());
                text.drain(at..end);
            }
            _ => {
                if at < text.len() {
                    text[at] = *self.pick(alphabet);
                }
            }
        }
    }
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `body(rng, iteration)` for `iterations` (times `EMBER_FUZZ_ITERS`) or the time
/// budget, whichever ends first; returns how many ran.
pub fn fuzz_loop(target: &str, iterations: usize, mut body: impl FnMut(&mut Rng, usize)) -> usize {
    let seed: u64 = env_or("EMBER_FUZZ_SEED", 0x5EED_E3BE_u64);
    let iterations = iterations * env_or("EMBER_FUZZ_ITERS", 1usize);
    let budget = Duration::from_secs_f64(env_or("EMBER_FUZZ_SECS", 8.0));
    // Each target has its own stream, so adding one does not change the others.
    let stream = target
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ b as u64);
    let mut rng = Rng(ember_data::SplitMix64::new(seed ^ stream));
    let start = Instant::now();
    let mut done = 0;
    while done < iterations && start.elapsed() < budget {
        body(&mut rng, done);
        done += 1;
    }
    eprintln!(
        "fuzz {target}: {done} inputs in {:.2} s (seed {seed:#x})",
        start.elapsed().as_secs_f64()
    );
    done
}

/// Runs `f`, turning a panic into `Err(message)`.
pub fn no_panic<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(non-string panic payload)".into())
    })
}
