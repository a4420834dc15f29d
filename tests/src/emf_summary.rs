//! Totals over a run's EMF documents, as `lambda-emulator` prints them at the end: counts
//! summed, gauges at their peak, distributions merged (count, sum, min, max). Figures of the
//! function-level documents (`[FunctionName]` only) carry every count once; documents with more
//! dimensions (Destination, Route/Region, FunctionVersion) repeat samples split up, so they are
//! kept apart under a label such as `requests [Destination=api:443]`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

/// Levels, not events: a sum of them would mean nothing.
const GAUGES: &[&str] = &["active_connections", "connections_peak", "drill_active"];

/// A merged distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dist {
    pub count: f64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// What a run's EMF lines add up to.
#[derive(Clone, Debug, Default)]
pub struct EmfSummary {
    /// Lines that were EMF documents.
    pub documents: usize,
    /// Counts (and gauges), function-level.
    pub totals: BTreeMap<String, f64>,
    pub dists: BTreeMap<String, Dist>,
    /// The same, for documents with more dimensions, keyed `metric [Dim=value,…]`.
    pub by_dimension: BTreeMap<String, f64>,
    pub dists_by_dimension: BTreeMap<String, Dist>,
}

/// The dimensions of a document beyond `FunctionName`, as `Dim=value,…` (its smallest
/// dimension set: the one that says what the document is about).
fn label(doc: &Value) -> String {
    let sets = doc["_aws"]["CloudWatchMetrics"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["Dimensions"].as_array().cloned().unwrap_or_default());
    let smallest = sets
        .filter_map(|s| s.as_array().cloned())
        .min_by_key(Vec::len)
        .unwrap_or_default();
    smallest
        .iter()
        .filter_map(Value::as_str)
        .filter(|k| *k != "FunctionName")
        .map(|k| format!("{k}={}", doc[k].as_str().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(",")
}

fn merge(into: &mut BTreeMap<String, Dist>, name: String, v: &Map<String, Value>) {
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    let (Some(count), Some(sum), Some(min), Some(max)) = (f("Count"), f("Sum"), f("Min"), f("Max"))
    else {
        return;
    };
    let d = into.entry(name).or_insert(Dist {
        count: 0.0,
        sum: 0.0,
        min,
        max,
    });
    d.count += count;
    d.sum += sum;
    d.min = d.min.min(min);
    d.max = d.max.max(max);
}

impl EmfSummary {
    /// Reads every line that is an EMF document (a JSON object with `_aws`); others are skipped.
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut s = EmfSummary::default();
        for line in lines {
            let Ok(doc) = serde_json::from_str::<Value>(line.trim()) else {
                continue;
            };
            if doc.get("_aws").is_none() {
                continue;
            }
            s.documents += 1;
            s.add(&doc);
        }
        s
    }

    fn add(&mut self, doc: &Value) {
        let label = label(doc);
        // A metric declared by several directives (the key metrics, also per function
        // version) has one value at the root: it counts once.
        let mut names: Vec<String> = doc["_aws"]["CloudWatchMetrics"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["Metrics"].as_array().cloned().unwrap_or_default())
            .filter_map(|m| m["Name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        for name in &names {
            let name = name.as_str();
            let (counts, dists, key) = if label.is_empty() {
                (&mut self.totals, &mut self.dists, name.to_string())
            } else {
                (
                    &mut self.by_dimension,
                    &mut self.dists_by_dimension,
                    format!("{name} [{label}]"),
                )
            };
            match &doc[name] {
                Value::Object(o) => merge(dists, key, o),
                v => {
                    let n = match v {
                        Value::Array(a) => a.iter().filter_map(Value::as_f64).sum(),
                        v => v.as_f64().unwrap_or(0.0),
                    };
                    let e = counts.entry(key).or_insert(0.0);
                    *e = if GAUGES.contains(&name) {
                        e.max(n)
                    } else {
                        *e + n
                    };
                }
            }
        }
    }

    /// A function-level count (0 when never written).
    pub fn total(&self, metric: &str) -> f64 {
        self.totals.get(metric).copied().unwrap_or(0.0)
    }

    /// The summary as JSON (`--emf-json`), for scripts.
    pub fn to_json(&self) -> Value {
        let dists = |m: &BTreeMap<String, Dist>| -> Value {
            m.iter()
                .map(|(k, d)| {
                    let avg = if d.count > 0.0 { d.sum / d.count } else { 0.0 };
                    let v = json!({"count": d.count, "sum": d.sum, "min": d.min, "max": d.max, "avg": avg});
                    (k.clone(), v)
                })
                .collect::<Map<_, _>>()
                .into()
        };
        json!({
            "documents": self.documents,
            "totals": self.totals,
            "distributions": dists(&self.dists),
            "by_dimension": self.by_dimension,
            "distributions_by_dimension": dists(&self.dists_by_dimension),
        })
    }

    /// Aligned text, one metric a line: function-level counts, then distributions, then the
    /// per-dimension figures.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let count_line = |out: &mut String, k: &str, v: f64| {
            let _ = writeln!(out, "   {k:<56} {v:>10}");
        };
        let dist_line = |out: &mut String, k: &str, d: &Dist| {
            let avg = if d.count > 0.0 { d.sum / d.count } else { 0.0 };
            let _ = writeln!(
                out,
                "   {k:<56} n={:<5} avg={avg:.3} ms  min={:.3}  max={:.3}",
                d.count, d.min, d.max
            );
        };
        for (k, v) in &self.totals {
            count_line(&mut out, k, *v);
        }
        for (k, d) in &self.dists {
            dist_line(&mut out, k, d);
        }
        for (k, v) in &self.by_dimension {
            count_line(&mut out, k, *v);
        }
        for (k, d) in &self.dists_by_dimension {
            dist_line(&mut out, k, d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_counts_peaks_gauges_merges_distributions_and_keeps_dimensions_apart() {
        let doc = |requests: u64, active: u64, min: f64, max: f64| {
            json!({
                "_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "EgressWarden",
                    "Dimensions": [["FunctionName"]],
                    "Metrics": [{"Name": "requests"}, {"Name": "active_connections"}, {"Name": "request_ms"}]}]},
                "FunctionName": "f", "requests": requests, "active_connections": active,
                "request_ms": {"Values": [min, max], "Counts": [1, 1], "Min": min, "Max": max, "Count": 2, "Sum": min + max}
            })
            .to_string()
        };
        let dest = json!({
            "_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "EgressWarden",
                "Dimensions": [["FunctionName", "Destination"]], "Metrics": [{"Name": "requests"}]}]},
            "FunctionName": "f", "Destination": "api:443", "requests": 3
        })
        .to_string();
        let lines = [
            doc(2, 5, 1.0, 4.0),
            "not json".to_string(),
            doc(1, 3, 0.5, 2.0),
            dest,
        ];
        let s = EmfSummary::from_lines(lines.iter().map(String::as_str));
        assert_eq!(s.documents, 3);
        assert_eq!(s.total("requests"), 3.0);
        assert_eq!(s.total("active_connections"), 5.0);
        assert_eq!(
            s.dists["request_ms"],
            Dist {
                count: 4.0,
                sum: 7.5,
                min: 0.5,
                max: 4.0
            }
        );
        assert_eq!(s.by_dimension["requests [Destination=api:443]"], 3.0);
        let j = s.to_json();
        assert_eq!(j["totals"]["requests"], 3.0);
        assert_eq!(j["distributions"]["request_ms"]["avg"], 1.875);
        assert!(s.render().contains("requests [Destination=api:443]"));
    }

    #[test]
    fn a_metric_declared_per_function_version_too_counts_once() {
        let line = json!({
            "_aws": {"Timestamp": 1, "CloudWatchMetrics": [
                {"Namespace": "EgressWarden", "Dimensions": [["FunctionName"]],
                 "Metrics": [{"Name": "requests"}, {"Name": "invocations"}]},
                {"Namespace": "EgressWarden", "Dimensions": [["FunctionName", "FunctionVersion"]],
                 "Metrics": [{"Name": "requests"}]}]},
            "FunctionName": "f", "FunctionVersion": "7", "requests": 4, "invocations": 1
        })
        .to_string();
        let s = EmfSummary::from_lines([line.as_str()]);
        assert_eq!(s.total("requests"), 4.0);
        assert_eq!(s.total("invocations"), 1.0);
    }
}
