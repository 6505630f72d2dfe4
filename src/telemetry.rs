//! Structured logs through `tracing`, to stderr, as text or JSON, with a level that a reload can change.
use std::io::IsTerminal;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs a new filter; the concrete reload handle's type depends on the log format.
type SetFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogControl(Arc<SetFilter>);

impl LogControl {
    /// Installs a new level or filter.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        (self.0)(level)
    }
}

/// Installs the global subscriber; `RUST_LOG`, when set, overrides the configured level at start.
/// Returns `None` when a subscriber was already installed (tests start many servers in one process).
pub fn init_logging(config: &LogConfig) -> Option<LogControl> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    // The format must be chosen before the filter is made reloadable: the reload handle's type names it.
    macro_rules! install {
        ($format:expr) => {{
            let builder = $format.with_env_filter(filter).with_writer(std::io::stderr).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().ok()?;
            let set = move |level: &str| {
                let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            };
            Some(LogControl(Arc::new(set)))
        }};
    }
    match config.format {
        LogFormat::Text => install!(tracing_subscriber::fmt().with_ansi(colour(&std::io::stderr()))),
        // One object per line: the event's fields at the top level, the innermost span's fields under
        // `span` and every enclosing span under `spans`, so a pipeline can group the lines of one reload.
        LogFormat::Json => install!(tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_ansi(false)),
    }
}

/// Colour only for a person at a terminal: `serve > edge.log 2>&1` or a pipe to a log shipper must get
/// plain text, not escape codes. `NO_COLOR` (https://no-color.org) turns it off at a terminal too; it
/// is checked here because an explicit `with_ansi` overrides tracing-subscriber's own check.
fn colour(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}
