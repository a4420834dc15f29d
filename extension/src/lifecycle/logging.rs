//! Logs go to stderr through `tracing` (stdout carries the EMF lines); JSON when Lambda's
//! log format is JSON so CloudWatch Logs can filter on fields.

use crate::config::LogLevel;
use tracing_subscriber::filter::LevelFilter;

pub fn init(level: LogLevel, json: bool) {
    let filter = match level {
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
