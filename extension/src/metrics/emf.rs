//! CloudWatch Embedded Metric Format writer.
//!
//! One window becomes as many JSON lines as the EMF limits require: at most 100 metrics per
//! directive, 100 values per metric and 256 KiB per event. Anything that does not fit goes
//! into another line; nothing is dropped.

use super::flat::{
    self, by_version, round_ms, Reading, Scope, FUNCTION_NAME_DIMENSION, FUNCTION_VERSION_DIMENSION,
};
use super::{Histogram, Snapshot};
use serde_json::{json, Map, Value};
use std::io::Write;

pub const EMF_MAX_METRICS_PER_DIRECTIVE: usize = 100;
pub const EMF_MAX_VALUES_PER_METRIC: usize = 100;
pub const EMF_MAX_EVENT_BYTES: usize = 256 * 1024;
/// Room kept for `_aws`, dimensions and the line's framing when packing metrics.
const ENVELOPE_ALLOWANCE: usize = 4 * 1024;

#[derive(Debug, Clone)]
pub struct EmfWriter {
    namespace: String,
    function_name: String,
    /// When set, the key metrics are also declared under `[FunctionName, FunctionVersion]`.
    function_version: Option<String>,
}

/// One metric value ready to place in a document.
struct Entry {
    name: String,
    unit: &'static str,
    value: Value,
    bytes: usize,
}

impl Entry {
    fn new(name: &str, unit: &'static str, value: Value) -> Self {
        let bytes = name.len() * 2 + unit.len() + value.to_string().len() + 40;
        Entry {
            name: name.to_owned(),
            unit,
            value,
            bytes,
        }
    }
}

#[derive(Default)]
struct Document {
    entries: Vec<Entry>,
    bytes: usize,
}

impl Document {
    fn fits(&self, entry: &Entry) -> bool {
        self.entries.len() < EMF_MAX_METRICS_PER_DIRECTIVE
            && self.bytes + entry.bytes + ENVELOPE_ALLOWANCE <= EMF_MAX_EVENT_BYTES
            && !self.entries.iter().any(|e| e.name == entry.name)
    }
}

impl EmfWriter {
    pub fn new(namespace: impl Into<String>, function_name: impl Into<String>) -> Self {
        EmfWriter {
            namespace: namespace.into(),
            function_name: function_name.into(),
            function_version: None,
        }
    }

    /// Also declares the key metrics ([`flat::by_version`]) under `[FunctionName,
    /// FunctionVersion]`: a second directive over the same values, so the line carries them
    /// once.
    pub fn with_version(mut self, function_version: Option<String>) -> Self {
        self.function_version = function_version;
        self
    }

    /// Renders a window as EMF lines (without trailing newlines). An empty window gives none.
    pub fn render(&self, snapshot: &Snapshot, timestamp_ms: u64) -> Vec<String> {
        let mut lines = Vec::new();
        for group in flat::flatten(snapshot) {
            let mut entries = Vec::new();
            for figure in group.figures {
                match figure.reading {
                    Reading::Count(n) => {
                        entries.push(Entry::new(figure.name, figure.unit, json!(n)))
                    }
                    Reading::Level(l) => {
                        entries.push(Entry::new(figure.name, figure.unit, json!(l)))
                    }
                    Reading::Amount(a) => {
                        entries.push(Entry::new(figure.name, figure.unit, json!(a)))
                    }
                    Reading::Distribution(h) => histogram_entries(figure.name, h, &mut entries),
                }
            }
            self.pack(entries, group.scope, timestamp_ms, &mut lines);
        }
        lines
    }

    /// Writes a window to `out` as EMF lines in one write, so the lines stay whole.
    pub fn write(
        &self,
        snapshot: &Snapshot,
        timestamp_ms: u64,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let lines = self.render(snapshot, timestamp_ms);
        if lines.is_empty() {
            return Ok(());
        }
        let mut buf = lines.join("\n");
        buf.push('\n');
        out.write_all(buf.as_bytes())?;
        out.flush()
    }

    fn pack(
        &self,
        entries: Vec<Entry>,
        scope: Scope<'_>,
        timestamp_ms: u64,
        lines: &mut Vec<String>,
    ) {
        let mut documents: Vec<Document> = Vec::new();
        for entry in entries {
            let slot = match documents.iter().position(|d| d.fits(&entry)) {
                Some(i) => i,
                None => {
                    documents.push(Document::default());
                    documents.len() - 1
                }
            };
            let doc = &mut documents[slot];
            doc.bytes += entry.bytes;
            doc.entries.push(entry);
        }
        for doc in documents {
            lines.push(self.document(doc, scope, timestamp_ms));
        }
    }

    fn document(&self, doc: Document, scope: Scope<'_>, timestamp_ms: u64) -> String {
        let scoped = scope.dimensions();
        let mut dimensions = vec![FUNCTION_NAME_DIMENSION];
        dimensions.extend(scoped.iter().map(|(name, _)| *name));
        let definitions: Vec<Value> = doc
            .entries
            .iter()
            .map(|e| json!({"Name": e.name, "Unit": e.unit}))
            .collect();
        let mut directives = vec![json!({
            "Namespace": self.namespace,
            "Dimensions": [dimensions],
            "Metrics": definitions,
        })];
        let version = (self.function_version.as_deref()).filter(|_| scope == Scope::Function);
        if version.is_some() {
            let by_version: Vec<Value> = doc
                .entries
                .iter()
                .filter(|e| by_version(&e.name))
                .map(|e| json!({"Name": e.name, "Unit": e.unit}))
                .collect();
            if !by_version.is_empty() {
                directives.push(json!({
                    "Namespace": self.namespace,
                    "Dimensions": [[FUNCTION_NAME_DIMENSION, FUNCTION_VERSION_DIMENSION]],
                    "Metrics": by_version,
                }));
            }
        }
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": directives,
            }),
        );
        root.insert(FUNCTION_NAME_DIMENSION.into(), json!(self.function_name));
        if let Some(version) = version {
            root.insert(FUNCTION_VERSION_DIMENSION.into(), json!(version));
        }
        for (name, value) in scoped {
            root.insert(name.into(), json!(value));
        }
        for entry in doc.entries {
            root.insert(entry.name, entry.value);
        }
        Value::Object(root).to_string()
    }
}

/// A histogram as `Values`/`Counts` (with exact `Min`/`Max`/`Count`/`Sum`), split into
/// chunks of at most 100 values that go into separate documents.
fn histogram_entries(name: &str, histogram: &Histogram, entries: &mut Vec<Entry>) {
    let pairs = histogram.values_and_counts();
    let chunks: Vec<&[(f64, u64)]> = pairs.chunks(EMF_MAX_VALUES_PER_METRIC).collect();
    let Some(last) = chunks.len().checked_sub(1) else {
        return;
    };
    let mut sum_so_far = 0.0;
    for (i, chunk) in chunks.iter().enumerate() {
        let count: u64 = chunk.iter().map(|(_, n)| n).sum();
        // Chunk sums from bucket values, the last one made up to the exact total.
        let sum = if i == last {
            (histogram.sum() - sum_so_far).max(0.0)
        } else {
            chunk.iter().map(|(v, n)| v * *n as f64).sum()
        };
        sum_so_far += sum;
        let min = if i == 0 { histogram.min() } else { chunk[0].0 };
        let max = if i == last {
            histogram.max()
        } else {
            chunk[chunk.len() - 1].0
        };
        let value = json!({
            "Values": chunk.iter().map(|(v, _)| round_ms(*v)).collect::<Vec<_>>(),
            "Counts": chunk.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            "Min": round_ms(min),
            "Max": round_ms(max),
            "Count": count,
            "Sum": round_ms(sum),
        });
        entries.push(Entry::new(name, "Milliseconds", value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Counter, Recorder, Timing};

    fn parse(line: &str) -> Value {
        serde_json::from_str(line).unwrap_or(Value::Null)
    }

    #[test]
    fn counters_land_at_root_with_a_directive() {
        let r = Recorder::new();
        r.count(Counter::Invocations, 2);
        let lines = EmfWriter::new("EgressWarden", "fn").render(&r.take(), 1);
        assert_eq!(lines.len(), 1);
        let doc = parse(&lines[0]);
        assert_eq!(doc["invocations"], 2);
        assert_eq!(doc["FunctionName"], "fn");
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "EgressWarden"
        );
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "FunctionName"
        );
    }

    #[test]
    fn wide_histograms_split_without_losing_counts() {
        let r = Recorder::new();
        let mut v = 0.01;
        let mut recorded = 0u64;
        while v < 50_000.0 {
            r.observe_ms(Timing::RequestMs, v);
            recorded += 1;
            v *= 1.03;
        }
        let lines = EmfWriter::new("ns", "fn").render(&r.take(), 1);
        assert!(lines.len() > 1);
        let mut counted = 0u64;
        for line in &lines {
            assert!(line.len() <= EMF_MAX_EVENT_BYTES);
            let doc = parse(line);
            let values = doc["request_ms"]["Values"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0);
            assert!(values <= EMF_MAX_VALUES_PER_METRIC);
            counted += doc["request_ms"]["Counts"]
                .as_array()
                .map(|c| c.iter().filter_map(Value::as_u64).sum::<u64>())
                .unwrap_or(0);
        }
        assert_eq!(counted, recorded);
    }

    #[test]
    fn more_than_a_hundred_metrics_split() {
        let r = Recorder::new();
        for i in 0..250 {
            r.count_named(&format!("m{i}"), 1);
        }
        let lines = EmfWriter::new("ns", "fn").render(&r.take(), 1);
        assert_eq!(lines.len(), 3);
        for line in lines {
            let doc = parse(&line);
            let n = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .map(Vec::len);
            assert!(n.unwrap_or(0) <= EMF_MAX_METRICS_PER_DIRECTIVE);
        }
    }

    #[test]
    fn destinations_get_their_own_dimension_set() {
        let r = Recorder::new();
        r.count_for("api.example.com:443", Counter::Requests, 1);
        let lines = EmfWriter::new("ns", "fn").render(&r.take(), 1);
        assert_eq!(lines.len(), 2);
        let doc = parse(&lines[1]);
        assert_eq!(doc["Destination"], "api.example.com:443");
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][1],
            "Destination"
        );
    }

    #[test]
    fn key_metrics_are_also_declared_per_function_version() {
        let r = Recorder::new();
        r.count(Counter::Invocations, 3);
        r.count(Counter::ColdStarts, 1);
        r.count_for("api.example.com:443", Counter::Requests, 2);
        r.observe_ms(Timing::RequestMs, 4.0);
        let window = r.take();
        let lines = EmfWriter::new("ns", "fn")
            .with_version(Some("7".into()))
            .render(&window, 1);
        assert_eq!(lines.len(), 2);
        let doc = parse(&lines[0]);
        assert_eq!(doc["FunctionVersion"], "7");
        let directives = &doc["_aws"]["CloudWatchMetrics"];
        assert_eq!(directives.as_array().map(Vec::len), Some(2));
        assert_eq!(
            directives[1]["Dimensions"],
            json!([["FunctionName", "FunctionVersion"]])
        );
        let names: Vec<&str> = directives[1]["Metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["Name"].as_str())
            .collect();
        assert_eq!(names, ["cold_starts", "requests", "request_ms"]);
        // Per-destination lines keep their one dimension set.
        let dest = parse(&lines[1]);
        assert_eq!(dest["FunctionVersion"], Value::Null);
        assert_eq!(
            dest["_aws"]["CloudWatchMetrics"].as_array().map(Vec::len),
            Some(1)
        );
        // Without a version: one directive, as before.
        let plain = parse(&EmfWriter::new("ns", "fn").render(&window, 1)[0]);
        assert_eq!(
            plain["_aws"]["CloudWatchMetrics"].as_array().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn empty_window_writes_nothing() {
        let mut out = Vec::new();
        let r = Recorder::new();
        let w = EmfWriter::new("ns", "fn");
        assert!(w.write(&r.take(), 1, &mut out).is_ok());
        assert!(out.is_empty());
    }
}
