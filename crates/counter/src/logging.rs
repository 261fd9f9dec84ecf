//! Logs on stderr, filtered by `RUST_LOG` (default: `default_level`): human-readable lines by
//! default, or one JSON object per line (`--log-format json`) for a log pipeline.

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, with its spans (a request's carries its command, key and
    /// request id).
    Json,
}

pub fn init(default_level: &str) {
    init_with(default_level, LogFormat::Text)
}

pub fn init_with(default_level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
