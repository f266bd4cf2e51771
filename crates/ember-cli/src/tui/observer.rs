//! `ember train --tui`: a [`TrainObserver`] whose thread owns the terminal (alternate
//! screen, raw mode) from the run's start, redraws the [`Dashboard`] at most every
//! 100 ms, and turns `q` or Ctrl-C into a stop request (a second one leaves at once,
//! exit 130). SIGTERM and SIGHUP are stop requests too, so a killed run still writes its
//! checkpoint and gives the terminal back. The terminal is restored when the run ends, or
//! panics (ratatui's hook).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember_train::{StepMetrics, TrainObserver};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::render::render;
use super::state::Dashboard;

/// Set by SIGTERM or SIGHUP while the dashboard holds the terminal.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(true, Ordering::Release);
}

/// Routes SIGTERM and SIGHUP to [`SIGNALLED`] (`install`), or back to their defaults.
fn route_signals(install: bool) {
    let handler = if install {
        on_signal as *const () as libc::sighandler_t
    } else {
        libc::SIG_DFL
    };
    // SAFETY: the handler only performs an atomic store.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGHUP, handler);
    }
}

enum Update {
    Step {
        step: usize,
        loss: f64,
        tokens_per_s: f64,
    },
    Record(Box<StepMetrics>),
    /// The run ended: draw the last state and give the terminal back.
    Finished,
    /// The run is unwinding from a panic: give the terminal back without drawing.
    Abandon,
}

/// The dashboard's handle in the training loop. The terminal is taken when the run
/// starts (after its setup has printed what it prints), not when this is created.
pub struct TuiObserver {
    updates: Option<Sender<Update>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TuiObserver {
    pub fn new() -> Self {
        Self {
            updates: None,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Takes over the terminal and starts drawing; on failure the run goes on with no
    /// view (the reason on stderr).
    fn start(&mut self, dashboard: Dashboard) {
        let terminal = match ratatui::try_init() {
            Ok(terminal) => terminal,
            Err(e) => {
                ratatui::restore();
                eprintln!("--tui: cannot take over the terminal ({e}); no live view");
                return;
            }
        };
        route_signals(true);
        let (updates, receiver) = mpsc::channel();
        let flag = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name("ember-tui".into())
            .spawn(move || {
                let mut terminal = terminal;
                draw_loop(&mut terminal, dashboard, &receiver, &flag);
                ratatui::restore();
                route_signals(false);
            });
        match spawned {
            Ok(thread) => {
                self.updates = Some(updates);
                self.thread = Some(thread);
            }
            Err(e) => {
                ratatui::restore();
                route_signals(false);
                eprintln!("--tui: cannot start the view's thread ({e}); no live view");
            }
        }
    }

    fn send(&self, update: Update) {
        if let Some(updates) = &self.updates {
            let _ = updates.send(update);
        }
    }

    fn close(&mut self, update: Update) {
        self.send(update);
        self.updates = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn draw_loop(
    terminal: &mut ratatui::DefaultTerminal,
    mut dashboard: Dashboard,
    updates: &Receiver<Update>,
    stop: &AtomicBool,
) {
    let throttle = Duration::from_millis(100);
    let mut drawn: Option<Instant> = None;
    let mut dirty = true;
    loop {
        match updates.recv_timeout(Duration::from_millis(50)) {
            Ok(update) => {
                let mut next = Some(update);
                while let Some(update) = next.take() {
                    match update {
                        Update::Step {
                            step,
                            loss,
                            tokens_per_s,
                        } => dashboard.stepped(step, loss, tokens_per_s, Instant::now()),
                        Update::Record(record) => dashboard.recorded(&record),
                        Update::Finished => {
                            // The final state, whatever the redraw throttle.
                            let _ = terminal.draw(|frame| render(frame, &dashboard));
                            return;
                        }
                        Update::Abandon => return,
                    }
                    dirty = true;
                    next = updates.try_recv().ok();
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if SIGNALLED.load(Ordering::Acquire) && !dashboard.stopping {
            stop.store(true, Ordering::Release);
            dashboard.stopping = true;
            dirty = true;
        }
        while event::poll(Duration::ZERO).unwrap_or(false) {
            match event::read() {
                Ok(Event::Key(key)) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if key.code == KeyCode::Char('q') || ctrl_c {
                        if dashboard.stopping {
                            // Asked twice: leave now. The last checkpoint on disk stays
                            // loadable (checkpoints are written atomically).
                            ratatui::restore();
                            eprintln!(
                                "ember train: interrupted; resume from the last checkpoint with --resume"
                            );
                            std::process::exit(130);
                        }
                        stop.store(true, Ordering::Release);
                        dashboard.stopping = true;
                        dirty = true;
                    }
                }
                Ok(_) => dirty = true,
                Err(_) => break,
            }
        }
        if dirty && drawn.is_none_or(|t| t.elapsed() >= throttle) {
            let _ = terminal.draw(|frame| render(frame, &dashboard));
            drawn = Some(Instant::now());
            dirty = false;
        }
    }
}

impl TrainObserver for TuiObserver {
    fn started(&mut self, total: usize, step: usize, banner: &str) {
        let mut dashboard = Dashboard::default();
        dashboard.started(total, step, banner, Instant::now());
        self.start(dashboard);
    }

    fn step(&mut self, step: usize, train_loss: f64, tokens_per_s: f64) {
        self.send(Update::Step {
            step,
            loss: train_loss,
            tokens_per_s,
        });
    }

    fn record(&mut self, record: &StepMetrics) {
        self.send(Update::Record(Box::new(record.clone())));
    }

    fn finished(&mut self) {
        self.close(Update::Finished);
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire) || SIGNALLED.load(Ordering::Acquire)
    }
}

impl Drop for TuiObserver {
    fn drop(&mut self) {
        let update = if std::thread::panicking() {
            Update::Abandon
        } else {
            Update::Finished
        };
        self.close(update);
    }
}
