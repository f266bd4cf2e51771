//! `ember train --tui`: a [`TrainObserver`] whose thread owns the terminal (alternate
//! screen, raw mode), redraws the [`Dashboard`] at most every 100 ms, and turns `q` or
//! Ctrl-C into a stop request. The terminal is restored when the run ends (or panics:
//! ratatui's hook).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember_train::{StepMetrics, TrainObserver};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::render::render;
use super::state::Dashboard;

enum Update {
    Started {
        total: usize,
        step: usize,
        banner: String,
    },
    Step {
        step: usize,
        loss: f64,
        tokens_per_s: f64,
    },
    Record(Box<StepMetrics>),
    Finished,
}

/// The dashboard's handle in the training loop.
pub struct TuiObserver {
    updates: Sender<Update>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TuiObserver {
    /// Takes over the terminal; fails (leaving it as it was) when it is not one.
    pub fn start() -> std::io::Result<Self> {
        let terminal = ratatui::try_init()?;
        let (updates, receiver) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ember-tui".into())
            .spawn(move || {
                let mut terminal = terminal;
                draw_loop(&mut terminal, &receiver, &flag);
                ratatui::restore();
            })?;
        Ok(Self {
            updates,
            stop,
            thread: Some(thread),
        })
    }

    fn close(&mut self) {
        let _ = self.updates.send(Update::Finished);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn draw_loop(
    terminal: &mut ratatui::DefaultTerminal,
    updates: &Receiver<Update>,
    stop: &AtomicBool,
) {
    let mut dashboard = Dashboard::default();
    let mut drawn = Instant::now() - Duration::from_secs(1);
    loop {
        let mut dirty = false;
        match updates.recv_timeout(Duration::from_millis(50)) {
            Ok(update) => {
                let mut next = Some(update);
                while let Some(update) = next.take() {
                    match update {
                        Update::Started {
                            total,
                            step,
                            banner,
                        } => dashboard.started(total, step, &banner, Instant::now()),
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
                    }
                    dirty = true;
                    next = updates.try_recv().ok();
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while event::poll(Duration::ZERO).unwrap_or(false) {
            if let Ok(Event::Key(key)) = event::read()
                && key.kind == KeyEventKind::Press
            {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if key.code == KeyCode::Char('q') || ctrl_c {
                    stop.store(true, Ordering::Release);
                    dashboard.stopping = true;
                    dirty = true;
                }
            } else {
                // A resize or other event: redraw.
                dirty = true;
            }
        }
        if dirty && drawn.elapsed() >= Duration::from_millis(100) {
            let _ = terminal.draw(|frame| render(frame, &dashboard));
            drawn = Instant::now();
        }
    }
}

impl TrainObserver for TuiObserver {
    fn started(&mut self, total: usize, step: usize, banner: &str) {
        let _ = self.updates.send(Update::Started {
            total,
            step,
            banner: banner.to_string(),
        });
    }

    fn step(&mut self, step: usize, train_loss: f64, tokens_per_s: f64) {
        let _ = self.updates.send(Update::Step {
            step,
            loss: train_loss,
            tokens_per_s,
        });
    }

    fn record(&mut self, record: &StepMetrics) {
        let _ = self.updates.send(Update::Record(Box::new(record.clone())));
    }

    fn finished(&mut self) {
        self.close();
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

impl Drop for TuiObserver {
    fn drop(&mut self) {
        self.close();
    }
}
