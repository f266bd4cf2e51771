//! Continuous batching: between two passes of the model, finished and cancelled
//! sequences leave the batch and waiting ones join it. Each pass runs every running
//! sequence's next token and chunks of the prompts being prefilled, up to a token budget,
//! over one paged KV cache. When blocks run out, the newest sequence is preempted: its
//! blocks are freed and it waits at the head of the queue to be computed again, with its
//! sampler untouched, so nothing it already sent changes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ember_infer::{HostDecoder, PagedChunk, PagedKv};

use super::request::FinishReason;
use super::sequence::{Outcome, Sequence};
use crate::metrics::Metrics;

/// Limits of the running batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences in the running batch at most.
    pub max_num_seqs: usize,
    /// Tokens one pass computes at most (decoding tokens first, then prompt chunks).
    pub max_batched_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 64,
            max_batched_tokens: 512,
        }
    }
}

/// The batch and the cache it runs over.
pub(crate) struct Scheduler {
    model: Arc<HostDecoder>,
    kv: PagedKv,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
    /// Oldest first; preempted sequences go back to the front.
    waiting: VecDeque<Sequence>,
    /// Oldest first.
    running: Vec<Sequence>,
    /// Requests not yet started (what admission control counts).
    queued: Arc<AtomicUsize>,
    /// Whether full blocks are shared between sequences by content. Off under dynamic
    /// NTK scaling, whose keys depend on the length of the pass that computed them.
    prefix_caching: bool,
}

impl Scheduler {
    pub fn new(
        model: Arc<HostDecoder>,
        kv: PagedKv,
        config: SchedulerConfig,
        metrics: Arc<Metrics>,
        queued: Arc<AtomicUsize>,
    ) -> Self {
        let prefix_caching = !matches!(
            model.config().rope_scaling,
            Some(ember_ops::RopeScaling::DynamicNtk { .. })
        );
        Self {
            model,
            kv,
            config,
            metrics,
            waiting: VecDeque::new(),
            running: Vec::new(),
            prefix_caching,
            queued,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn add(&mut self, sequence: Sequence) {
        self.waiting.push_back(sequence);
        self.update_gauges();
    }

    /// Free blocks and total blocks of the cache.
    pub fn blocks(&self) -> (usize, usize) {
        (self.kv.free_blocks(), self.kv.total_blocks())
    }

    fn update_gauges(&self) {
        self.metrics.running.set(self.running.len() as i64);
        self.metrics.waiting.set(self.waiting.len() as i64);
        self.metrics.kv_cache_usage.set(self.kv.usage());
    }

    /// Ends `seq` (its blocks return to the pool, content kept for later prefixes).
    fn retire(&mut self, mut seq: Sequence, reason: FinishReason, now: Instant) {
        self.kv.release(&mut seq.table);
        if !seq.started && seq.choice == 0 {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        self.metrics.finished(reason.as_str());
        if seq.finish(reason) {
            let request = &seq.request;
            self.metrics
                .e2e_latency
                .observe((now - request.arrived).as_secs_f64());
        }
        if let (Some(first), Some(last)) = (seq.first_token_at, seq.last_token_at) {
            let n = seq.generated().len();
            if n > 1 {
                let per_token = (last - first).as_secs_f64() / (n - 1) as f64;
                self.metrics.time_per_output_token.observe(per_token);
            }
        }
    }

    /// Drops the sequences whose clients have gone.
    fn drop_cancelled(&mut self) {
        let now = Instant::now();
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(Sequence::cancelled);
        self.running = kept;
        let (gone_waiting, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(Sequence::cancelled);
        self.waiting = kept.into();
        for seq in gone.into_iter().chain(gone_waiting) {
            self.retire(seq, FinishReason::Abort, now);
        }
    }

    /// Ends every sequence with `Abort` (shutdown).
    pub fn abort_all(&mut self) {
        let now = Instant::now();
        let all: Vec<Sequence> = self
            .running
            .drain(..)
            .chain(self.waiting.drain(..))
            .collect();
        for seq in all {
            self.retire(seq, FinishReason::Abort, now);
        }
        self.update_gauges();
    }

    fn preempt(&mut self, mut seq: Sequence) {
        self.kv.release(&mut seq.table);
        self.metrics.preemptions.inc();
        // Keep the queue in seniority order: a preempted sequence is older than anything
        // that never ran, but maybe younger than other preempted ones.
        let at = self
            .waiting
            .iter()
            .position(|w| w.key() > seq.key())
            .unwrap_or(self.waiting.len());
        self.waiting.insert(at, seq);
    }

    /// Whether `seq` may join the batch now: choices after the first wait until the first
    /// has computed the prompt, so that they share its blocks.
    fn admissible(seq: &Sequence) -> bool {
        seq.choice == 0 || seq.request.prompt_done.load(Ordering::Acquire)
    }

    /// One pass: schedule, run the model, sample. Returns whether anything ran.
    pub fn step(&mut self) -> bool {
        self.drop_cancelled();
        let mut budget = self.config.max_batched_tokens;
        let mut scheduled: Vec<(Sequence, usize)> = Vec::new();
        let mut candidates: VecDeque<Sequence> = std::mem::take(&mut self.running).into();
        let mut preempted = false;
        // Decoding sequences (one pending token) first, then prompt chunks, each phase
        // oldest first; a victim is always the newest sequence not yet scheduled.
        for decoding in [true, false] {
            let mut i = 0;
            while budget > 0 && i < candidates.len() {
                if (candidates[i].pending() == 1) != decoding {
                    i += 1;
                    continue;
                }
                let mut seq = candidates.remove(i).expect("index in range");
                let take = seq.pending().min(budget);
                loop {
                    let want = seq.table.len + take;
                    if self.kv.reserve(&mut seq.table, want).is_ok() {
                        budget -= take;
                        scheduled.push((seq, take));
                        break;
                    }
                    preempted = true;
                    match candidates.pop_back() {
                        Some(victim) => {
                            if candidates.len() < i {
                                i = candidates.len();
                            }
                            if victim.key() < seq.key() {
                                // Older than `seq` (a prefill behind the decoders):
                                // `seq` is the newest left, so it gives way instead.
                                candidates.push_back(victim);
                                self.preempt(seq);
                                break;
                            }
                            self.preempt(victim);
                        }
                        None => {
                            self.preempt(seq);
                            break;
                        }
                    }
                }
            }
        }
        // Sequences the budget did not reach keep their place.
        let mut unscheduled: Vec<Sequence> = candidates.into();
        if !preempted {
            self.admit(&mut budget, &mut scheduled, unscheduled.len());
        }
        if scheduled.is_empty() {
            self.running = unscheduled;
            self.update_gauges();
            return false;
        }
        let logits = {
            let mut chunks: Vec<PagedChunk> = scheduled
                .iter_mut()
                .map(|(seq, take)| {
                    let start = seq.table.len;
                    PagedChunk {
                        table: &mut seq.table,
                        tokens: &seq.tokens[start..start + *take],
                    }
                })
                .collect();
            self.model.forward_paged(&mut self.kv, &mut chunks)
        };
        let vocab = self.model.config().vocab_size;
        let now = Instant::now();
        for (i, (mut seq, _)) in scheduled.into_iter().enumerate() {
            if self.prefix_caching {
                self.kv.index_blocks(0, &mut seq.table, &seq.tokens);
            }
            if seq.choice == 0 && seq.table.len >= seq.request.prompt.len() {
                seq.request.prompt_done.store(true, Ordering::Release);
            }
            if seq.pending() > 0 {
                unscheduled.push(seq);
                continue;
            }
            if let Some(last) = seq.last_token_at {
                self.metrics
                    .inter_token_latency
                    .observe((now - last).as_secs_f64());
            } else if seq.choice == 0 {
                self.metrics
                    .time_to_first_token
                    .observe((now - seq.request.arrived).as_secs_f64());
            }
            self.metrics.generation_tokens.inc();
            match seq.advance(&logits[i * vocab..(i + 1) * vocab], now) {
                Outcome::Continue => unscheduled.push(seq),
                Outcome::Finished(reason) => self.retire(seq, reason, now),
            }
        }
        unscheduled.sort_by_key(Sequence::key);
        self.running = unscheduled;
        self.update_gauges();
        true
    }

    /// Moves waiting sequences into the batch while the budget, the batch size and free
    /// blocks allow; each takes the blocks of any prompt prefix already cached.
    fn admit(
        &mut self,
        budget: &mut usize,
        scheduled: &mut Vec<(Sequence, usize)>,
        unscheduled: usize,
    ) {
        let mut i = 0;
        while *budget > 0
            && i < self.waiting.len()
            && scheduled.len() + unscheduled < self.config.max_num_seqs
        {
            if !Self::admissible(&self.waiting[i]) {
                i += 1;
                continue;
            }
            let mut seq = self.waiting.remove(i).expect("index in range");
            if self.prefix_caching {
                seq.table = self.kv.share_prefix(0, &seq.tokens);
            }
            let take = seq.pending().min(*budget);
            let want = seq.table.len + take;
            if self.kv.reserve(&mut seq.table, want).is_err() {
                self.kv.release(&mut seq.table);
                self.waiting.insert(i, seq);
                break;
            }
            // Counted once it really starts (not when it only tried to).
            if !seq.started {
                seq.started = true;
                let prompt = seq.request.prompt.len() as u64;
                self.metrics.prefix_cache_queries.inc_by(prompt);
                self.metrics
                    .prefix_cache_hits
                    .inc_by((seq.table.len as u64).min(prompt));
                if seq.choice == 0 {
                    self.metrics.prompt_tokens.inc_by(prompt);
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                }
            }
            *budget -= take;
            scheduled.push((seq, take));
        }
    }
}
