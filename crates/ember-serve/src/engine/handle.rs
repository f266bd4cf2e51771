//! The engine thread and the handle the server talks to it through. The thread owns the
//! model's batch and cache and runs passes while there is work; it sleeps on its command
//! channel when there is none.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember_infer::{HostDecoder, PagedKv};
use tokio::sync::mpsc::unbounded_channel;

use super::request::{GenerationRequest, RequestState, Submitted};
use super::scheduler::{Scheduler, SchedulerConfig};
use super::sequence::{Detokenize, Sequence};
use crate::metrics::Metrics;

/// How the engine is sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Positions per KV block.
    pub block_size: usize,
    /// KV blocks in the pool.
    pub kv_blocks: usize,
    /// Requests waiting for the batch at most; more are refused (HTTP 503).
    pub max_queued_requests: usize,
}

/// Why the engine did not take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is busy: {0} requests are already waiting; retry later")]
    QueueFull(usize),
    /// More prompts in one request than the queue ever holds.
    #[error("{0} prompts in one request; the server queues at most {1}")]
    TooMany(usize, usize),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request breaks a rule the server checks first (a caller's bug).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The engine thread stopped on an internal error; the server must be restarted.
    #[error("the inference engine failed and stopped; restart the server")]
    Failed,
}

enum Command {
    Add(Arc<RequestState>),
    AbortAll,
    Stop,
}

/// What the server and the thread share.
struct Shared {
    /// Requests accepted and not yet started (the scheduler decrements it).
    queued: Arc<AtomicUsize>,
    draining: AtomicBool,
    next_id: AtomicU64,
    /// Free and total KV blocks after the last pass (for tests and `/health`).
    blocks: Mutex<(usize, usize)>,
    idle: AtomicBool,
    /// The engine thread panicked: nothing will run any more.
    failed: AtomicBool,
    /// After the shutdown grace: requests still arriving are ended at once.
    aborting: AtomicBool,
}

/// The server's side of the engine; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    config: EngineConfig,
    detokenize: Detokenize,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    max_seq_len: usize,
    vocab_size: usize,
}

impl EngineHandle {
    /// Starts the engine thread over `model` with a pool of `config.kv_blocks` blocks.
    pub fn start(
        model: Arc<HostDecoder>,
        config: EngineConfig,
        detokenize: Detokenize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let kv = PagedKv::new(model.config(), config.block_size, config.kv_blocks);
        let (max_seq_len, vocab_size) = (model.config().max_seq_len, model.config().vocab_size);
        let queued = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            queued: queued.clone(),
            draining: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            blocks: Mutex::new((kv.free_blocks(), kv.total_blocks())),
            idle: AtomicBool::new(true),
            failed: AtomicBool::new(false),
            aborting: AtomicBool::new(false),
        });
        let (commands, receiver) = mpsc::channel();
        let scheduler = Scheduler::new(model, kv, config.scheduler, metrics, queued.clone());
        let thread_shared = shared.clone();
        let decode = detokenize.clone();
        let thread = std::thread::Builder::new()
            .name("ember-engine".into())
            .spawn(move || run(scheduler, receiver, thread_shared, decode))
            .expect("spawning the engine thread");
        Self {
            commands,
            shared,
            config,
            detokenize,
            thread: Arc::new(Mutex::new(Some(thread))),
            max_seq_len,
            vocab_size,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Queues `request`; its events arrive on the returned receiver. Refused when the
    /// queue is full or the server is shutting down.
    pub fn submit(&self, request: GenerationRequest) -> Result<Submitted, SubmitError> {
        self.submit_many(vec![request])
    }

    /// Queues several requests whose events share one receiver: request `i`'s choices
    /// are numbered from the sum of the `n` before it. All are queued or none.
    pub fn submit_many(&self, requests: Vec<GenerationRequest>) -> Result<Submitted, SubmitError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(SubmitError::Failed);
        }
        if self.shared.draining.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        let limit = self.config.max_queued_requests;
        let count = requests.len();
        if count > limit {
            return Err(SubmitError::TooMany(count, limit));
        }
        for request in &requests {
            self.check(request)?;
        }
        let queued = self.shared.queued.fetch_add(count, Ordering::AcqRel);
        if queued + count > limit {
            self.shared.queued.fetch_sub(count, Ordering::AcqRel);
            return Err(SubmitError::QueueFull(queued));
        }
        let (events, receiver) = unbounded_channel();
        let first_id = self
            .shared
            .next_id
            .fetch_add(count as u64, Ordering::Relaxed);
        let mut states = Vec::with_capacity(count);
        let (mut prompt_tokens, mut choices) = (0, 0);
        for (i, request) in requests.into_iter().enumerate() {
            prompt_tokens += request.prompt.len();
            let n = request.params.n;
            states.push(Arc::new(RequestState {
                id: first_id + i as u64,
                prompt: request.prompt,
                params: request.params,
                choice_base: choices,
                events: events.clone(),
                arrived: Instant::now(),
                prompt_done: AtomicBool::new(false),
                remaining: AtomicUsize::new(n),
            }));
            choices += n;
        }
        drop(events);
        for (sent, state) in states.into_iter().enumerate() {
            if self.commands.send(Command::Add(state)).is_err() {
                self.shared.queued.fetch_sub(count - sent, Ordering::AcqRel);
                return Err(SubmitError::ShuttingDown);
            }
        }
        Ok(Submitted {
            id: first_id,
            prompt_tokens,
            choices,
            events: receiver,
        })
    }

    /// What the scheduler relies on: a prompt, `n` of at least 1, and room in the context.
    fn check(&self, request: &GenerationRequest) -> Result<(), SubmitError> {
        let (max_seq_len, vocab) = (self.max_seq_len, self.vocab_size);
        let p = &request.params;
        let invalid = |m: String| Err(SubmitError::Invalid(m));
        if request.prompt.is_empty() {
            return invalid("the prompt is empty".into());
        }
        if p.n == 0 || p.max_tokens == 0 {
            return invalid("n and max_tokens must be at least 1".into());
        }
        if request.prompt.len() + p.max_tokens > max_seq_len {
            return invalid(format!(
                "{} prompt tokens + {} new tokens exceed the context of {max_seq_len}",
                request.prompt.len(),
                p.max_tokens
            ));
        }
        if let Some(id) = request.prompt.iter().find(|&&id| id as usize >= vocab) {
            return invalid(format!(
                "token id {id} is outside the vocabulary of {vocab}"
            ));
        }
        Ok(())
    }

    /// Whether the engine thread stopped on an internal error.
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Free and total KV blocks after the engine's last pass.
    pub fn blocks(&self) -> (usize, usize) {
        *self.shared.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether nothing is running, waiting or on its way to the engine.
    pub fn is_idle(&self) -> bool {
        self.shared.idle.load(Ordering::Acquire) && self.shared.queued.load(Ordering::Acquire) == 0
    }

    /// Refuses new requests from now on.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    /// Ends every running and waiting request with `finish_reason` `abort`, and every
    /// request that still arrives.
    pub fn abort_all(&self) {
        self.shared.aborting.store(true, Ordering::Release);
        let _ = self.commands.send(Command::AbortAll);
    }

    /// Stops the thread (after aborting what is left) and waits for it.
    pub fn shutdown(&self) {
        self.drain();
        let _ = self.commands.send(Command::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// The tokenizer's decoding, as the engine uses it.
    pub fn detokenize(&self) -> &Detokenize {
        &self.detokenize
    }
}

fn run(
    mut scheduler: Scheduler,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
    detokenize: Detokenize,
) {
    let accept = |scheduler: &mut Scheduler, command: Command| -> bool {
        match command {
            Command::Add(state) => {
                for choice in 0..state.params.n {
                    scheduler.add(Sequence::new(state.clone(), choice, &detokenize));
                }
                if shared.aborting.load(Ordering::Acquire) {
                    scheduler.abort_all();
                }
                true
            }
            Command::AbortAll => {
                scheduler.abort_all();
                true
            }
            Command::Stop => {
                scheduler.abort_all();
                false
            }
        }
    };
    loop {
        // Idle: sleep until a command comes (waking now and then to notice cancellations
        // of waiting requests is not needed: nothing waits when idle).
        if scheduler.is_idle() {
            shared.idle.store(true, Ordering::Release);
            match commands.recv_timeout(Duration::from_millis(200)) {
                Ok(command) => {
                    if !accept(&mut scheduler, command) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        shared.idle.store(false, Ordering::Release);
        while let Ok(command) = commands.try_recv() {
            if !accept(&mut scheduler, command) {
                return;
            }
        }
        // A panic in a pass (a bug) must not leave clients waiting on a dead thread:
        // mark the engine failed and drop every sequence, which ends their streams.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scheduler.step()));
        let Ok(ran) = step else {
            shared.failed.store(true, Ordering::Release);
            shared.idle.store(true, Ordering::Release);
            eprintln!("ember serve: the engine failed; every request in flight was dropped");
            return;
        };
        *shared.blocks.lock().unwrap_or_else(|e| e.into_inner()) = scheduler.blocks();
        if !ran && !scheduler.is_idle() {
            // Waiting sequences that cannot start yet (blocks held by others that are
            // all waiting on something): yield briefly rather than spin.
            std::thread::sleep(Duration::from_millis(1));
        }
        if scheduler.is_idle() {
            shared.idle.store(true, Ordering::Release);
        }
    }
}
