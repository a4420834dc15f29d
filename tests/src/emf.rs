//! CloudWatch Embedded Metric Format validation, strict, from the published specification.
//!
//! The JSON Schema (`schemas/emf.schema.json`) covers the document's structure; the cross
//! references it cannot express are checked here: every dimension key must be a root member
//! with a string value, every metric name a root member with a valid metric value (a number,
//! an array of at most 100 numbers, or a `{Values, Counts}` distribution with equal lengths),
//! no metric defined twice in a directive, no name used both as metric and dimension, and the
//! whole document at most 1 MiB.

use serde_json::{json, Value};

/// The schema, as written into the repository.
pub const EMF_SCHEMA: &str = include_str!("../schemas/emf.schema.json");

/// Largest EMF log event CloudWatch Logs accepts.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

pub struct EmfValidator {
    document: jsonschema::Validator,
    metric_value: jsonschema::Validator,
    dimension_value: jsonschema::Validator,
}

/// A document that passed validation.
#[derive(Clone, Debug)]
pub struct EmfDocument {
    pub value: Value,
}

impl EmfDocument {
    pub fn timestamp_ms(&self) -> Option<u64> {
        self.value["_aws"]["Timestamp"].as_u64()
    }

    pub fn namespaces(&self) -> Vec<String> {
        self.directives()
            .iter()
            .filter_map(|d| d["Namespace"].as_str().map(str::to_string))
            .collect()
    }

    fn directives(&self) -> Vec<Value> {
        self.value["_aws"]["CloudWatchMetrics"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every dimension set of every directive.
    pub fn dimension_sets(&self) -> Vec<Vec<String>> {
        self.directives()
            .iter()
            .flat_map(|d| d["Dimensions"].as_array().cloned().unwrap_or_default())
            .map(|set| {
                set.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|k| k.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// (name, unit) of every metric defined.
    pub fn metrics(&self) -> Vec<(String, Option<String>)> {
        self.directives()
            .iter()
            .flat_map(|d| d["Metrics"].as_array().cloned().unwrap_or_default())
            .filter_map(|m| {
                Some((
                    m["Name"].as_str()?.to_string(),
                    m["Unit"].as_str().map(str::to_string),
                ))
            })
            .collect()
    }

    /// Each metric under each dimension set that declares it, with the dimensions' values
    /// from the root, sorted by name (as CloudWatch lists them): one entry per metric a
    /// CloudWatch consumer would store.
    pub fn declared(&self) -> Vec<(String, Vec<(String, String)>)> {
        let mut out = Vec::new();
        for directive in self.directives() {
            let names: Vec<String> = directive["Metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["Name"].as_str().map(str::to_string))
                .collect();
            for set in directive["Dimensions"].as_array().into_iter().flatten() {
                let mut dims: Vec<(String, String)> = set
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| {
                        let k = k.as_str()?;
                        Some((k.to_string(), self.get(k)?.as_str()?.to_string()))
                    })
                    .collect();
                dims.sort();
                for name in &names {
                    out.push((name.clone(), dims.clone()));
                }
            }
        }
        out
    }

    /// Whether the document defines metric `name`.
    pub fn defines(&self, name: &str) -> bool {
        self.metrics().iter().any(|(n, _)| n == name)
    }

    /// The total a metric contributes: the number, the sum of an array, or Σ value × count of
    /// a distribution. `None` when the document does not define it.
    pub fn metric_total(&self, name: &str) -> Option<f64> {
        if !self.defines(name) {
            return None;
        }
        total_of(&self.value[name])
    }

    /// A root member (dimension value, property).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key)
    }
}

fn total_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Array(a) => Some(a.iter().filter_map(Value::as_f64).sum()),
        Value::Object(o) => {
            let values = o.get("Values")?.as_array()?;
            let counts = o.get("Counts")?.as_array()?;
            Some(
                values
                    .iter()
                    .zip(counts)
                    .map(|(v, c)| v.as_f64().unwrap_or(0.0) * c.as_f64().unwrap_or(0.0))
                    .sum(),
            )
        }
        _ => None,
    }
}

impl Default for EmfValidator {
    fn default() -> Self {
        Self::new()
    }
}

impl EmfValidator {
    /// Compiles the schema. Panics only if the schema in the repository is broken.
    pub fn new() -> Self {
        let schema: Value = serde_json::from_str(EMF_SCHEMA).expect("emf.schema.json is JSON");
        let defs = schema["definitions"].clone();
        let sub = |name: &str| {
            let s = json!({
                "$schema": "http://json-schema.org/draft-07/schema#",
                "definitions": defs,
                "allOf": [{ "$ref": format!("#/definitions/{name}") }]
            });
            jsonschema::draft7::new(&s).expect("sub-schema compiles")
        };
        EmfValidator {
            document: jsonschema::draft7::new(&schema).expect("emf.schema.json compiles"),
            metric_value: sub("MetricValue"),
            dimension_value: sub("DimensionValue"),
        }
    }

    /// Validates one stdout line as an EMF document; every problem found is listed.
    pub fn validate_line(&self, line: &str) -> Result<EmfDocument, Vec<String>> {
        if line.len() > MAX_DOCUMENT_BYTES {
            return Err(vec![format!(
                "document is {} bytes, above the {MAX_DOCUMENT_BYTES}-byte limit",
                line.len()
            )]);
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| vec![format!("not a JSON document: {e}")])?;
        self.validate(value)
    }

    pub fn validate(&self, value: Value) -> Result<EmfDocument, Vec<String>> {
        let mut errors: Vec<String> = self
            .document
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        let directives = value["_aws"]["CloudWatchMetrics"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, d) in directives.iter().enumerate() {
            let mut dimension_keys = Vec::new();
            for set in d["Dimensions"].as_array().into_iter().flatten() {
                for key in set
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    dimension_keys.push(key.to_string());
                    match value.get(key) {
                        None => errors.push(format!(
                            "directive {i}: dimension {key:?} has no root member"
                        )),
                        Some(v) if !self.dimension_value.is_valid(v) => errors.push(format!(
                            "directive {i}: dimension {key:?} must be a string of 1..=1024 characters, got {v}"
                        )),
                        Some(_) => {}
                    }
                }
            }
            let mut seen = Vec::new();
            for m in d["Metrics"].as_array().into_iter().flatten() {
                let Some(name) = m["Name"].as_str() else {
                    continue;
                };
                if seen.contains(&name) {
                    errors.push(format!("directive {i}: metric {name:?} defined twice"));
                }
                seen.push(name);
                if dimension_keys.iter().any(|k| k == name) {
                    errors.push(format!(
                        "directive {i}: {name:?} is both a metric and a dimension"
                    ));
                }
                match value.get(name) {
                    None => {
                        errors.push(format!("directive {i}: metric {name:?} has no root member"))
                    }
                    Some(v) => {
                        let problems: Vec<String> = self
                            .metric_value
                            .iter_errors(v)
                            .map(|e| e.to_string())
                            .collect();
                        if !problems.is_empty() {
                            errors.push(format!(
                                "directive {i}: metric {name:?} must be a number, an array of at most 100 numbers or a Values/Counts distribution, got {v}: {}",
                                problems.join("; ")
                            ));
                        } else if let (Some(values), Some(counts)) = (
                            v.get("Values").and_then(Value::as_array),
                            v.get("Counts").and_then(Value::as_array),
                        ) {
                            if values.len() != counts.len() {
                                errors.push(format!(
                                    "directive {i}: metric {name:?} has {} Values but {} Counts",
                                    values.len(),
                                    counts.len()
                                ));
                            }
                        }
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(EmfDocument { value })
        } else {
            Err(errors)
        }
    }
}

/// Sum of `metric` over `docs` (documents that do not define it add nothing).
pub fn sum(docs: &[EmfDocument], metric: &str) -> f64 {
    docs.iter().filter_map(|d| d.metric_total(metric)).sum()
}

/// Sum of `metric` over the function-level EMF documents among `lines` (documents with a
/// `Destination` dimension repeat the same figures split up); lines that are not valid EMF
/// add nothing.
pub fn function_total(lines: &[String], metric: &str) -> f64 {
    let v = EmfValidator::new();
    lines
        .iter()
        .filter_map(|l| v.validate_line(l).ok())
        .filter(|d| d.get("Destination").is_none())
        .filter_map(|d| d.metric_total(metric))
        .sum()
}

/// Whether a line looks like an EMF document at all (a JSON object with `_aws`).
pub fn looks_like_emf(line: &str) -> bool {
    serde_json::from_str::<Value>(line)
        .ok()
        .is_some_and(|v| v.get("_aws").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(extra: Value) -> Value {
        let mut d = json!({
            "_aws": {
                "Timestamp": 1_700_000_000_000u64,
                "CloudWatchMetrics": [{
                    "Namespace": "EgressWarden",
                    "Dimensions": [["FunctionName"]],
                    "Metrics": [{"Name": "invocations", "Unit": "Count"},
                                {"Name": "request_ms", "Unit": "Milliseconds"}]
                }]
            },
            "FunctionName": "f",
            "invocations": 1,
            "request_ms": {"Values": [1.5, 3.0], "Counts": [2, 1], "Max": 3.0, "Min": 1.5, "Count": 3, "Sum": 6.0}
        });
        if let (Some(o), Some(e)) = (d.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        d
    }

    #[test]
    fn valid_document_and_totals() {
        let v = EmfValidator::new();
        let d = v.validate(doc(json!({}))).unwrap();
        assert_eq!(d.metric_total("invocations"), Some(1.0));
        assert_eq!(d.metric_total("request_ms"), Some(6.0));
        assert_eq!(d.namespaces(), vec!["EgressWarden"]);
    }

    #[test]
    fn rejects_what_the_spec_forbids() {
        let v = EmfValidator::new();
        let bad = [
            doc(json!({"FunctionName": 3})),
            doc(json!({"invocations": "1"})),
            doc(json!({"invocations": []})),
            doc(json!({"request_ms": {"Values": [1.0], "Counts": [1, 2]}})),
            doc(json!({"request_ms": {"Values": [1.0], "Counts": [1], "P99": 1}})),
            doc(json!({"invocations": (0..101).collect::<Vec<_>>()})),
        ];
        for b in bad {
            assert!(v.validate(b.clone()).is_err(), "accepted {b}");
        }
        let mut seconds = doc(json!({}));
        seconds["_aws"]["Timestamp"] = json!(1_700_000_000u64);
        assert!(v.validate(seconds).is_err());
        let mut no_member = doc(json!({}));
        no_member.as_object_mut().unwrap().remove("invocations");
        assert!(v.validate(no_member).is_err());
    }
}
