//! The SAM templates: `cfn-lint` passes on every one, and their dashboards and alarms name only
//! metrics the extension emits, with the operators' signals and their alarm targets present.
//!
//! Source of truth for the names: the `metric_enum!` declarations in
//! `extension/src/metrics/names.rs` (what `metric_name()` returns), the CloudWatch sink's own
//! counter in `extension/src/metrics/cloudwatch/mod.rs`, and the `symptom_<finding>` names of the
//! findings listed in INTERFACE.md. Needs `python3` with cfn-lint (.ci/run installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use warden_tests::warden::workspace_root;

const NAMESPACE: &str = "EgressWarden";
/// INTERFACE.md, "Findings".
const FINDINGS: [&str; 7] = [
    "no_egress_route",
    "aws_endpoint_unreachable",
    "eni_cold_path",
    "nat_port_exhaustion",
    "dns_throttled",
    "idle_reset",
    "cross_region",
];

fn templates() -> Vec<PathBuf> {
    let dir = workspace_root().join("sam");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        })
        .collect();
    found.sort();
    found
}

/// Every name in the `metric_enum!(...)` blocks: lines of the form `Variant => "name",`.
fn enum_metric_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in source.lines() {
        let line = line.trim();
        if line.starts_with("metric_enum!(") {
            inside = true;
        } else if inside && line.starts_with(");") {
            inside = false;
        } else if inside {
            if let Some((_, rest)) = line.split_once("=> \"") {
                if let Some((name, _)) = rest.split_once('"') {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

fn const_str(source: &str, name: &str) -> Option<String> {
    let line = source
        .lines()
        .find(|l| l.contains(&format!("const {name}: &str = \"")))?;
    let (_, rest) = line.split_once("= \"")?;
    Some(rest.split_once('"')?.0.to_string())
}

fn known_metric_names() -> BTreeSet<String> {
    let root = workspace_root().join("extension/src/metrics");
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut known: BTreeSet<String> = enum_metric_names(&read(&root.join("names.rs")))
        .into_iter()
        .collect();
    assert!(
        known.len() > 20 && known.contains("dns_ms") && known.contains("requests"),
        "the metric_enum! declarations were not found in metrics/names.rs: {known:?}"
    );
    known.insert(
        const_str(&read(&root.join("cloudwatch/mod.rs")), "PUT_ERRORS_METRIC")
            .expect("PUT_ERRORS_METRIC in metrics/cloudwatch/mod.rs"),
    );
    known.insert(
        const_str(&read(&root.join("names.rs")), "EGRESS_COST_METRIC")
            .expect("EGRESS_COST_METRIC in metrics/names.rs"),
    );
    known.extend(FINDINGS.iter().map(|f| format!("symptom_{f}")));
    known
}

/// The metrics the extension also writes per function version: `BY_VERSION` in
/// `extension/src/metrics/flat.rs` (one quoted name per line).
fn per_version_metric_names() -> BTreeSet<String> {
    let path = workspace_root().join("extension/src/metrics/flat.rs");
    let source =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let start = source
        .find("const BY_VERSION")
        .expect("BY_VERSION in metrics/flat.rs");
    let block = &source[start..];
    let block = &block[..block.find("];").expect("BY_VERSION's end")];
    let names: BTreeSet<String> = block
        .lines()
        .skip(1)
        .filter_map(|l| {
            l.trim()
                .strip_prefix('"')?
                .split_once('"')
                .map(|(n, _)| n.to_string())
        })
        .collect();
    assert!(
        names.contains("requests") && names.contains("errors"),
        "{names:?}"
    );
    names
}

/// The findings the README documents: the `| finding |` table of its "Findings" section.
fn readme_findings() -> BTreeSet<String> {
    let path = workspace_root().join("README.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let section = text
        .split("### Findings")
        .nth(1)
        .expect("README.md has a Findings section");
    let table = section
        .split("| finding |")
        .nth(1)
        .expect("README.md's Findings section has a table");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.strip_prefix("| `")?.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .collect()
}

#[test]
fn the_findings_list_matches_the_readme_and_the_contract() {
    let expected: BTreeSet<String> = FINDINGS.iter().map(|f| f.to_string()).collect();
    assert_eq!(readme_findings(), expected, "README.md's findings table");
    // The contract lives beside the repository (../shared), where CI has it; the README check
    // above holds everywhere.
    let path = workspace_root().join("../shared/INTERFACE.md");
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("{} not found: compared with README.md only", path.display());
        return;
    };
    let section = text
        .split("## Findings")
        .nth(1)
        .expect("INTERFACE.md has a Findings section");
    let first_paragraph = section.split("Each is logged").next().unwrap_or("");
    let listed: BTreeSet<String> = first_paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.contains(' '))
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, expected, "INTERFACE.md's findings");
}

/// What `tests/cloudwatch/template_metrics.py` finds in a template.
fn references(template: &Path) -> Value {
    let script = workspace_root().join("tests/cloudwatch/template_metrics.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(template)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed on {}: {}\n(needs cfn-lint: pip install cfn-lint)",
        script.display(),
        template.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from template_metrics.py");
    let errors = v["errors"].as_array().cloned().unwrap_or_default();
    assert!(errors.is_empty(), "{}: {errors:?}", template.display());
    v
}

fn list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// (where, metric) pairs.
type Metrics = Vec<(String, Value)>;
/// (where, expression, the metric ids in scope there).
type Expressions = Vec<(String, String, Vec<String>)>;

/// Every metric of dashboards and alarms, and every metric-math expression.
fn metrics_and_expressions(v: &Value) -> (Metrics, Expressions) {
    let mut metrics = Vec::new();
    let mut expressions = Vec::new();
    let mut scopes: Vec<(String, Value)> = Vec::new();
    for d in list(&v["dashboards"]) {
        for w in list(&d["widgets"]) {
            let place = format!("{} / {}", d["resource"], w["title"]);
            scopes.push((place, w));
        }
    }
    for a in list(&v["alarms"]) {
        scopes.push((a["resource"].to_string(), a));
    }
    for (place, scope) in scopes {
        let mut ids: Vec<String> = Vec::new();
        for m in list(&scope["metrics"]) {
            if let Some(id) = m["id"].as_str() {
                ids.push(id.to_string());
            }
            metrics.push((place.clone(), m));
        }
        for e in list(&scope["expressions"]) {
            if let Some(id) = e["id"].as_str() {
                ids.push(id.to_string());
            }
        }
        for e in list(&scope["expressions"]) {
            let text = e["expression"].as_str().unwrap_or_default().to_string();
            expressions.push((place.clone(), text, ids.clone()));
        }
    }
    (metrics, expressions)
}

#[test]
fn cfn_lint_passes_on_every_template() {
    let all = templates();
    assert!(
        all.iter().any(|p| p.ends_with("template.yaml"))
            && all.iter().any(|p| p.ends_with("attach-layer.yaml")),
        "{all:?}"
    );
    for t in all {
        let out = Command::new("cfn-lint")
            .arg(&t)
            .output()
            .unwrap_or_else(|e| panic!("cannot run cfn-lint ({e}): pip install cfn-lint"));
        assert!(
            out.status.success(),
            "cfn-lint {}:\n{}{}",
            t.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn dashboards_and_alarms_name_only_metrics_the_extension_emits() {
    let known = known_metric_names();
    let per_version = per_version_metric_names();
    for t in templates() {
        let v = references(&t);
        let (metrics, expressions) = metrics_and_expressions(&v);
        for (place, m) in &metrics {
            let name = m["name"].as_str().unwrap_or_default();
            assert!(
                known.contains(name),
                "{}: {place} names `{name}`, which the extension does not emit.\nKnown: {known:?}",
                t.display()
            );
            assert_eq!(m["namespace"], NAMESPACE, "{}: {place}", t.display());
            for dim in list(&m["dimensions"]) {
                assert!(
                    dim == "FunctionName" || dim == "Destination" || dim == "FunctionVersion",
                    "{}: {place}: dimension {dim} is not one the extension sets",
                    t.display()
                );
            }
            if list(&m["dimensions"]).contains(&Value::from("FunctionVersion")) {
                assert!(
                    per_version.contains(name),
                    "{}: {place}: `{name}` is not written per function version ({per_version:?})",
                    t.display()
                );
            }
            assert!(
                list(&m["dimensions"]).contains(&Value::from("FunctionName")),
                "{}: {place}: every metric has FunctionName",
                t.display()
            );
        }
        for (place, text, ids) in &expressions {
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with(|c: char| c.is_ascii_lowercase()) {
                    assert!(
                        ids.iter().any(|i| i == word),
                        "{}: {place}: `{text}` uses `{word}`, which no metric there has as id",
                        t.display()
                    );
                }
            }
        }
    }
}

fn has_metric(metrics: &[(String, Value)], name: &str, stat: &str) -> bool {
    metrics
        .iter()
        .any(|(_, m)| m["name"] == name && m["stat"] == stat)
}

#[test]
fn the_dashboard_shows_the_operators_signals() {
    let v = references(&workspace_root().join("sam/template.yaml"));
    assert_eq!(list(&v["dashboards"]).len(), 1, "one dashboard");
    let only_dashboard = serde_json::json!({ "dashboards": v["dashboards"], "alarms": [] });
    let (metrics, expressions) = metrics_and_expressions(&only_dashboard);
    for name in ["dns_ms", "tcp_connect_ms", "tls_ms", "ttfb_ms"] {
        for p in ["p50", "p95", "p99"] {
            assert!(has_metric(&metrics, name, p), "{name} {p}");
        }
    }
    for name in [
        "requests",
        "errors",
        "connections_opened",
        "connections_reused",
        "cross_region_requests",
        "circuit_open",
        "fallback_hits",
        "egress_bytes_nat",
        "egress_bytes_cross_region",
        "egress_bytes_vpc_endpoint",
        "egress_bytes_private",
        "egress_cost_usd",
        "rate_limited",
    ] {
        assert!(has_metric(&metrics, name, "Sum"), "{name} (Sum)");
    }
    for f in FINDINGS {
        assert!(has_metric(&metrics, &format!("symptom_{f}"), "Sum"), "{f}");
    }
    // Rates as metric math over the metrics' ids.
    let ratio = |num: &str| {
        expressions.iter().any(|(place, text, _)| {
            let id_of = |name: &str| {
                metrics
                    .iter()
                    .filter(|(p, m)| p == place && m["name"] == name)
                    .find_map(|(_, m)| m["id"].as_str().map(str::to_string))
            };
            match (id_of(num), id_of("requests")) {
                (Some(n), Some(d)) => text.contains(&n) && text.contains(&format!("/ {d}")),
                _ => false,
            }
        })
    };
    assert!(ratio("errors"), "socket error rate: errors / requests");
    assert!(ratio("cross_region_requests"), "cross-region share");
}

#[test]
fn alarms_sit_at_the_operators_targets() {
    let v = references(&workspace_root().join("sam/template.yaml"));
    let alarms = list(&v["alarms"]);
    let find = |pred: &dyn Fn(&Value) -> bool| alarms.iter().find(|a| pred(a)).cloned();
    let on = |a: &Value, name: &str| list(&a["metrics"]).iter().any(|m| m["name"] == name);
    let per_version = |a: &Value| {
        list(&a["metrics"])
            .iter()
            .any(|m| list(&m["dimensions"]).contains(&Value::from("FunctionVersion")))
    };

    for (metric, threshold) in [("dns_ms", 30.0), ("tcp_connect_ms", 120.0)] {
        let a = find(&|a| on(a, metric) && a["stat"] == "p95")
            .unwrap_or_else(|| panic!("a p95 alarm on {metric}"));
        assert_eq!(a["threshold"].as_f64(), Some(threshold), "{metric}");
        assert_eq!(a["comparison"], "GreaterThanThreshold", "{metric}");
    }
    for (metric, threshold) in [("errors", 0.1), ("cross_region_requests", 5.0)] {
        let a = find(&|a| on(a, metric) && on(a, "requests") && !per_version(a))
            .unwrap_or_else(|| panic!("a {metric} / requests alarm"));
        let returned: Vec<Value> = list(&a["expressions"])
            .into_iter()
            .filter(|e| e["returns"] != false)
            .collect();
        assert_eq!(returned.len(), 1, "{metric}: one expression is the alarm's");
        let text = returned[0]["expression"].as_str().unwrap_or_default();
        assert!(
            text.starts_with("100 *") && text.contains("/ requests"),
            "{text}"
        );
        assert_eq!(
            a["threshold"].as_f64(),
            Some(threshold),
            "{metric} (percent)"
        );
        assert_eq!(a["comparison"], "GreaterThanThreshold", "{metric}");
    }
    // The optional cost alarm: the hourly cost × 720 against the monthly budget.
    let cost = find(&|a| on(a, "egress_cost_usd")).expect("an egress cost alarm");
    let run_rate = list(&cost["expressions"])
        .into_iter()
        .find(|e| e["returns"] != false)
        .and_then(|e| e["expression"].as_str().map(str::to_string))
        .unwrap_or_default();
    assert!(run_rate.contains("* 720"), "{run_rate}");
}

#[test]
fn metric_names_are_read_from_the_enum_blocks_only() {
    let src = "metric_enum!(\n  Counter {\n    Requests => \"requests\",\n  }\n);\n\
               fn unit() { Counter::BytesIn => \"Bytes\", }\n";
    assert_eq!(enum_metric_names(src), ["requests"]);
}

/// The demo function rolls out through CodeDeploy (a canary by default) gated on egress-warden's
/// alarms for the version being deployed: its error rate, connect timeouts and p95 request
/// time, each under `[FunctionName, FunctionVersion]` with the new version's number.
#[test]
fn rollouts_are_gated_on_the_new_versions_egress() {
    let v = references(&workspace_root().join("sam/template.yaml"));
    assert_eq!(v["parameters"]["DeploymentType"], "Canary10Percent5Minutes");
    let deployments = list(&v["deployments"]);
    assert_eq!(deployments.len(), 1, "{deployments:?}");
    let d = &deployments[0];
    assert_eq!(d["function"], "DemoFunction");
    assert_eq!(d["type"], json!({"Ref": "DeploymentType"}));
    let alarms = list(&v["alarms"]);
    let gates: Vec<&Value> = list(&d["alarms"])
        .iter()
        .map(|name| {
            alarms
                .iter()
                .find(|a| a["resource"] == *name)
                .unwrap_or_else(|| panic!("gate {name} is an alarm of the template"))
        })
        .collect();
    let new_version = json!({"Fn::GetAtt": ["DemoFunction", "Version.Version"]});
    let mut gated_on = BTreeSet::new();
    for gate in &gates {
        let per_version: Vec<Value> = list(&gate["metrics"])
            .into_iter()
            .filter(|m| list(&m["dimensions"]).contains(&Value::from("FunctionVersion")))
            .collect();
        assert!(!per_version.is_empty(), "{}: per version", gate["resource"]);
        for m in &per_version {
            assert_eq!(
                m["dimension_values"][1], new_version,
                "{}: the version being deployed",
                gate["resource"]
            );
            gated_on.insert(m["name"].as_str().unwrap_or_default().to_string());
        }
        assert_eq!(gate["comparison"], "GreaterThanThreshold");
    }
    for metric in ["errors", "connect_timeouts", "request_ms"] {
        assert!(gated_on.contains(metric), "{metric}: {gated_on:?}");
    }
}
