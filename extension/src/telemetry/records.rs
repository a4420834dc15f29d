//! Telemetry API records, read leniently.
//!
//! Lambda adds record types over time (restore records, Managed Instances reports) and a
//! strict parser that rejects a whole batch for one record it does not know would lose the
//! ones it does. So: a batch is a JSON array; a record whose `type` is known and whose fields
//! we use are present becomes a [`PlatformEvent`]; everything else is counted and ignored.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The platform records the extension acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum PlatformEvent {
    /// `platform.initStart`: after a restore, the stale one of the snapshot's INIT may come.
    InitStart { initialization_type: Option<String> },
    /// `platform.start`: an invocation began.
    Start { request_id: String },
    /// `platform.runtimeDone`: the runtime finished an invocation (`success`, `error`,
    /// `timeout`, `failure`…).
    RuntimeDone { request_id: String, status: String },
    /// `platform.report`: an invocation ended (on Managed Instances with `durationMs` only).
    Report {
        request_id: String,
        status: Option<String>,
        duration_ms: Option<f64>,
    },
    /// `platform.restoreStart`: the environment was restored from a SnapStart snapshot.
    RestoreStart,
    /// `platform.restoreRuntimeDone`: the runtime's after-restore hooks ran.
    RestoreRuntimeDone { status: Option<String> },
    /// `platform.restoreReport`: the restore phase ended.
    RestoreReport { duration_ms: Option<f64> },
}

/// What one delivered batch held.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    pub events: Vec<PlatformEvent>,
    /// Records of types Lambda does not document (yet), or without the fields used. Documented
    /// types the extension has no use for (`platform.initReport`, `function` logs…) are not
    /// counted.
    pub ignored: usize,
}

/// Reads a delivered body. Never fails: a body that is not a JSON array counts as one
/// ignored record.
///
/// Borrowed and typed, not a `serde_json::Value` tree: a batch can hold a thousand records
/// (most of them `platform.report`s nobody asked for on an INVOKE-driven model), and only the
/// few fields used are read, without allocating for the rest.
pub fn parse_batch(body: &[u8]) -> Batch {
    let mut batch = Batch::default();
    let Ok(records) = serde_json::from_slice::<Vec<&RawValue>>(body) else {
        batch.ignored = 1;
        return batch;
    };
    for record in records {
        match parse_record(record) {
            Ok(Some(event)) => batch.events.push(event),
            Ok(None) => {}
            Err(Unreadable) => batch.ignored += 1,
        }
    }
    batch
}

/// A record as delivered; `record` is read only for the types acted on.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    record: Option<&'a RawValue>,
}

/// The fields used, of any record type (the rest are skipped unread).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Fields<'a> {
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow)]
    initialization_type: Option<Cow<'a, str>>,
    metrics: Option<Metrics>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Metrics {
    duration_ms: Option<f64>,
}

/// A record of a type Lambda does not document, or without the fields used.
struct Unreadable;

/// Documented record types the extension has no use for.
const UNUSED_TYPES: &[&str] = &[
    "platform.initRuntimeDone",
    "platform.initReport",
    "platform.extension",
    "platform.telemetrySubscription",
    "platform.logsDropped",
    "function",
    "extension",
];

/// `Ok(None)`: a documented type nothing here uses.
fn parse_record(raw: &RawValue) -> Result<Option<PlatformEvent>, Unreadable> {
    let envelope: Envelope<'_> = serde_json::from_str(raw.get()).map_err(|_| Unreadable)?;
    let kind = envelope.kind.as_ref();
    if UNUSED_TYPES.contains(&kind) {
        return Ok(None);
    }
    if !matches!(
        kind,
        "platform.initStart"
            | "platform.start"
            | "platform.runtimeDone"
            | "platform.report"
            | "platform.restoreStart"
            | "platform.restoreRuntimeDone"
            | "platform.restoreReport"
    ) {
        return Err(Unreadable);
    }
    let fields: Fields<'_> = match envelope.record {
        Some(record) => serde_json::from_str(record.get()).map_err(|_| Unreadable)?,
        None => Fields::default(),
    };
    let text = |field: Option<Cow<'_, str>>| field.map(Cow::into_owned);
    let required = |field: Option<Cow<'_, str>>| text(field).ok_or(Unreadable);
    let duration_ms = fields.metrics.and_then(|m| m.duration_ms);
    Ok(Some(match kind {
        "platform.initStart" => PlatformEvent::InitStart {
            initialization_type: text(fields.initialization_type),
        },
        "platform.start" => PlatformEvent::Start {
            request_id: required(fields.request_id)?,
        },
        "platform.runtimeDone" => PlatformEvent::RuntimeDone {
            request_id: required(fields.request_id)?,
            status: required(fields.status)?,
        },
        "platform.report" => PlatformEvent::Report {
            request_id: required(fields.request_id)?,
            status: text(fields.status),
            duration_ms,
        },
        "platform.restoreStart" => PlatformEvent::RestoreStart,
        "platform.restoreRuntimeDone" => PlatformEvent::RestoreRuntimeDone {
            status: text(fields.status),
        },
        _ => PlatformEvent::RestoreReport { duration_ms },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_mixing_known_restore_and_unknown_records_keeps_the_known_ones() {
        // Shapes as the Telemetry API reference documents them, plus a type from the future.
        let body = br#"[
          {"time":"2026-12-06T10:00:00.000Z","type":"platform.initStart",
           "record":{"initializationType":"snap-start","phase":"init","runtimeVersion":"python:3.12",
                     "functionName":"f","functionVersion":"3"}},
          {"time":"2026-12-06T10:05:00.000Z","type":"platform.restoreStart",
           "record":{"runtimeVersion":"python:3.12","functionName":"f","functionVersion":"3",
                     "instanceId":"i-1","instanceMaxMemory":256}},
          {"time":"2026-12-06T10:05:00.120Z","type":"platform.restoreRuntimeDone",
           "record":{"status":"success","spans":[]}},
          {"time":"2026-12-06T10:05:00.130Z","type":"platform.restoreReport",
           "record":{"status":"success","metrics":{"durationMs":130.5}}},
          {"time":"2026-12-06T10:05:01.000Z","type":"platform.quantumEntanglement",
           "record":{"spin":"up"}},
          {"time":"2026-12-06T10:05:01.000Z","type":"function","record":"hello from the handler"},
          {"time":"2026-12-06T10:05:01.100Z","type":"platform.start",
           "record":{"requestId":"r-1","version":"3"}},
          {"time":"2026-12-06T10:05:01.300Z","type":"platform.runtimeDone",
           "record":{"requestId":"r-1","status":"timeout","metrics":{"durationMs":3000.0}}},
          {"time":"2026-12-06T10:05:01.400Z","type":"platform.report",
           "record":{"requestId":"r-1","status":"timeout",
                     "metrics":{"durationMs":3001.2,"billedDurationMs":3002,"memorySizeMB":256,
                                "maxMemoryUsedMB":80,"restoreDurationMs":130.5}}}
        ]"#;
        let batch = parse_batch(body);
        assert_eq!(
            batch.ignored, 1,
            "the unknown type; the function's log line is a documented type"
        );
        assert_eq!(
            batch.events,
            vec![
                PlatformEvent::InitStart {
                    initialization_type: Some("snap-start".into())
                },
                PlatformEvent::RestoreStart,
                PlatformEvent::RestoreRuntimeDone {
                    status: Some("success".into())
                },
                PlatformEvent::RestoreReport {
                    duration_ms: Some(130.5)
                },
                PlatformEvent::Start {
                    request_id: "r-1".into()
                },
                PlatformEvent::RuntimeDone {
                    request_id: "r-1".into(),
                    status: "timeout".into()
                },
                PlatformEvent::Report {
                    request_id: "r-1".into(),
                    status: Some("timeout".into()),
                    duration_ms: Some(3001.2)
                },
            ]
        );
    }

    #[test]
    fn managed_instances_reports_carry_duration_only() {
        // Schema 2025-01-29: no billed duration, memory or init figures.
        let body = br#"[{"time":"2026-12-06T10:00:00.000Z","type":"platform.report",
            "record":{"requestId":"r-9","status":"success","metrics":{"durationMs":12.25}}}]"#;
        assert_eq!(
            parse_batch(body).events,
            vec![PlatformEvent::Report {
                request_id: "r-9".into(),
                status: Some("success".into()),
                duration_ms: Some(12.25)
            }]
        );
    }

    #[test]
    fn records_missing_what_we_use_are_ignored_not_fatal() {
        let body = br#"[
          {"type":"platform.initReport","record":{"status":"success"}},
          {"type":"platform.logsDropped","record":{"reason":"full"}},
          {"type":"platform.start","record":{}},
          {"type":"platform.runtimeDone","record":{"requestId":"r"}},
          {"record":{"requestId":"r"}},
          {"type":7},
          "not an object",
          {"type":"platform.start","record":{"requestId":"ok"}}
        ]"#;
        let batch = parse_batch(body);
        assert_eq!(batch.ignored, 5);
        assert_eq!(
            batch.events,
            vec![PlatformEvent::Start {
                request_id: "ok".into()
            }]
        );
    }

    #[test]
    fn a_body_that_is_not_an_array_is_one_ignored_record() {
        for body in [&b"{}"[..], b"", b"[1,", b"null"] {
            let batch = parse_batch(body);
            assert_eq!(batch.ignored, 1, "{:?}", String::from_utf8_lossy(body));
            assert!(batch.events.is_empty());
        }
    }
}
