//! Logs go to stderr through `tracing` (stdout carries the EMF lines); JSON when Lambda's
//! log format is JSON so CloudWatch Logs can filter on fields.
//!
//! stderr is a pipe the Lambda sandbox reads, and one `write(2)` per line wakes its reader
//! each time: with a decision line per proxied request that was a quarter of its CPU. So
//! the async runtime's worker threads gather their lines and write them together when the
//! worker runs out of work (tokio's park hook), before a batch would pass `PIPE_BUF` (so a
//! write stays atomic between threads), and when the extension exits ([`flush_all`]). Other
//! threads write each line at once.
//!
//! One event is one line: CloudWatch makes every line of a pipe its own log event, so the
//! line breaks inside a message or field (hickory's message dumps, error chains) are folded
//! into ` ⏎ ` here, once for every call site and both formats.

use crate::config::LogLevel;
use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::filter::LevelFilter;

/// Lines up to this many bytes go to a pipe in one atomic write (Linux's `PIPE_BUF`).
const BATCH_BYTES: usize = 4096;

type Batch = Arc<Mutex<Vec<u8>>>;

thread_local! {
    /// This worker's gathered lines (None on threads that write at once).
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Every worker's batch, so the exit path can write them all.
fn batches() -> &'static Mutex<Vec<Batch>> {
    static ALL: OnceLock<Mutex<Vec<Batch>>> = OnceLock::new();
    ALL.get_or_init(|| Mutex::new(Vec::new()))
}

/// The runtime's park hook: writes this worker's lines. Only worker threads park, so the
/// first park also makes this thread one that gathers (blocking-pool threads never do).
pub(super) fn worker_parks() {
    let _ = BATCH.try_with(|cell| {
        let Ok(mut cell) = cell.try_borrow_mut() else {
            return;
        };
        match cell.as_ref() {
            Some(batch) => write_out(batch),
            None => {
                let batch: Batch = Arc::new(Mutex::new(Vec::with_capacity(BATCH_BYTES)));
                if let Ok(mut all) = batches().lock() {
                    all.push(batch.clone());
                    *cell = Some(batch);
                }
            }
        }
    });
}

/// Writes every worker's gathered lines now (before the exit line, on SHUTDOWN or SIGTERM).
pub(super) fn flush_all() {
    if let Ok(all) = batches().lock() {
        for batch in all.iter() {
            write_out(batch);
        }
    }
}

fn write_out(batch: &Batch) {
    if let Ok(mut lines) = batch.lock() {
        if !lines.is_empty() {
            let _ = io::stderr().write_all(&lines);
            lines.clear();
        }
    }
}

/// Adds `line` to `lines`, first writing them to `out` if the line would take them past
/// [`BATCH_BYTES`]. False for a line too long to gather: the caller writes it at once.
fn gather(lines: &mut Vec<u8>, line: &[u8], out: &mut impl Write) -> bool {
    if lines.len() + line.len() > BATCH_BYTES {
        let _ = out.write_all(lines);
        lines.clear();
    }
    if line.len() > BATCH_BYTES {
        return false;
    }
    lines.extend_from_slice(line);
    true
}

/// What stands for a line break inside one event's line.
const FOLDED_BREAK: &[u8] = " ⏎ ".as_bytes();

/// `line` (one formatted event, ending in its newline) with every line break before that
/// newline folded into [`FOLDED_BREAK`]; `\r\n` counts as one break.
fn fold_breaks(line: &[u8]) -> Cow<'_, [u8]> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if !body.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        return Cow::Borrowed(line);
    }
    let mut folded = Vec::with_capacity(line.len() + 16);
    let mut rest = body;
    while let Some(at) = rest.iter().position(|b| matches!(b, b'\n' | b'\r')) {
        folded.extend_from_slice(&rest[..at]);
        folded.extend_from_slice(FOLDED_BREAK);
        let skip = if rest[at..].starts_with(b"\r\n") {
            2
        } else {
            1
        };
        rest = &rest[at + skip..];
    }
    folded.extend_from_slice(rest);
    if body.len() < line.len() {
        folded.push(b'\n');
    }
    Cow::Owned(folded)
}

/// What `tracing` writes a formatted line to: this worker's batch, or stderr at once.
struct LineWriter;

impl Write for LineWriter {
    /// tracing-subscriber's fmt layer hands over each event whole, in one call.
    fn write(&mut self, event: &[u8]) -> io::Result<usize> {
        let folded = fold_breaks(event);
        let line: &[u8] = &folded;
        let gathered = BATCH
            .try_with(|cell| {
                let Ok(cell) = cell.try_borrow() else {
                    return false;
                };
                let Some(Ok(mut lines)) = cell.as_ref().map(|batch| batch.lock()) else {
                    return false;
                };
                gather(&mut lines, line, &mut io::stderr())
            })
            .unwrap_or(false);
        if !gathered {
            io::stderr().write_all(line)?;
        }
        Ok(event.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) fn init(level: LogLevel, json: bool) {
    let filter = match level {
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_writer(|| LineWriter)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_inside_an_event_are_folded_into_one_line() {
        let fold = |s: &str| String::from_utf8(fold_breaks(s.as_bytes()).into_owned()).unwrap();
        assert_eq!(fold("plain line\n"), "plain line\n");
        assert!(matches!(fold_breaks(b"plain\n"), Cow::Borrowed(_)));
        assert_eq!(
            fold("DEBUG message: ; header\n; ANSWER\r\nx.example. 60 IN A 1.2.3.4\n"),
            "DEBUG message: ; header ⏎ ; ANSWER ⏎ x.example. 60 IN A 1.2.3.4\n"
        );
        assert_eq!(fold("a\n\nb\n"), "a ⏎  ⏎ b\n");
        assert_eq!(fold("no newline\rat end"), "no newline ⏎ at end");
        // JSON escapes its breaks already: a JSON line passes unchanged.
        let json = "{\"message\":\"a\\nb\"}\n";
        assert_eq!(fold(json), json);
    }

    #[test]
    fn lines_are_gathered_up_to_pipe_buf_and_written_whole_in_order() {
        let (mut lines, mut out) = (Vec::new(), Vec::new());
        let line = |c: u8| {
            let mut l = vec![c; 1499];
            l.push(b'\n');
            l
        };
        assert!(gather(&mut lines, &line(b'a'), &mut out));
        assert!(gather(&mut lines, &line(b'b'), &mut out));
        assert!(out.is_empty(), "two lines of 1,500 bytes fit in one batch");
        // A third would pass 4 KiB: the first two go out together, the third waits.
        assert!(gather(&mut lines, &line(b'c'), &mut out));
        assert_eq!(out, [line(b'a'), line(b'b')].concat());
        assert_eq!(lines, line(b'c'));
        // A line longer than a batch is not gathered; what waited goes out before it.
        assert!(!gather(&mut lines, &vec![b'x'; BATCH_BYTES + 1], &mut out));
        assert_eq!(out, [line(b'a'), line(b'b'), line(b'c')].concat());
        assert!(lines.is_empty());
    }
}
