//! The font every Ember figure draws text with, embedded in the binary (DejaVu Sans
//! Mono; license in `assets/FONT-LICENSE`), so plots need no system fonts.

use std::sync::Once;

use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

/// The family name figures ask for.
pub const FAMILY: &str = "sans-serif";

/// Registers the embedded font under [`FAMILY`] for every style (once per process).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            // The font is a valid TrueType file compiled in: registering cannot fail.
            let _ = plotters::style::register_font(FAMILY, style, FONT);
        }
    });
}
