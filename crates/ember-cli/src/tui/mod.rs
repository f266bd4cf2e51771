//! `ember train --tui`: the live terminal dashboard.

mod observer;
mod render;
mod state;

pub use observer::TuiObserver;
