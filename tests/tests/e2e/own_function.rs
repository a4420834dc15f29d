//! "Try it with your own function" (README), end to end through the user-facing path: the
//! `lambda-emulator` binary runs a Python handler file from a task root of its own through the
//! real `awslambdaric` (`python3 -m awslambdaric handler.fn`), behind the layer's exec wrapper,
//! with the real egress-warden extension. The handler fetches a loopback origin with urllib
//! (which honours the proxy variables the wrapper exports); the invoke's answer and the
//! extension's EMF, totalled by the emulator (`--emf-json`), show the request went through.
//!
//! Needs python3 with `awslambdaric` (scripts/setup installs it) and the binaries built:
//! `cargo build -p egress-warden -p warden-tests --bins`.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use warden_tests::prerequisite;
use warden_tests::process::Captured;
use warden_tests::python::{python3, upstream};
use warden_tests::warden::{free_port, target_dir, wrapper_script, ExtensionsDir};

const LIMIT: Duration = Duration::from_secs(60);

/// What the handler answers: the origin's reply and what the function saw of Lambda's setup.
const HANDLER: &str = r#"
import json, os, urllib.request

def fn(event, context):
    with urllib.request.urlopen(event["url"], timeout=5) as r:
        origin = json.loads(r.read())
    return {
        "origin": origin,
        "cwd": os.getcwd(),
        "task_root": os.environ.get("LAMBDA_TASK_ROOT"),
        "handler": os.environ.get("_HANDLER"),
        "http_proxy": os.environ.get("HTTP_PROXY"),
        "request_id": context.aws_request_id,
    }
"#;

fn awslambdaric() -> Result<(), String> {
    let ok = Command::new(python3())
        .args(["-c", "import awslambdaric"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(())
    } else {
        Err("python3 cannot import awslambdaric: pip install awslambdaric (scripts/setup)".into())
    }
}

#[test]
fn a_python_handler_through_awslambdaric_with_the_layer() {
    let Some(()) = prerequisite("awslambdaric (pip)", awslambdaric()) else {
        return;
    };
    let emulator = target_dir().join("debug").join("lambda-emulator");
    assert!(
        emulator.is_file(),
        "{} not found: cargo build -p warden-tests --bins",
        emulator.display()
    );
    let exts = ExtensionsDir::with_warden();
    let task = tempfile::Builder::new()
        .prefix("warden-task-")
        .tempdir()
        .expect("task root");
    std::fs::write(task.path().join("handler.py"), HANDLER).expect("handler.py");
    let emf_json = exts.scratch().join("emf.json");
    // On 127.0.0.2: the wrapper's NO_PROXY keeps 127.0.0.1 direct, as in Lambda.
    let (_origin, port) = upstream("origin", None);
    let url = format!("http://127.0.0.2:{port}/hello");
    let proxy_port = free_port();

    let mut cmd = Command::new(&emulator);
    cmd.arg("--extensions-dir")
        .arg(exts.path())
        .args(["--runtime", &python3()])
        .args(["--runtime-arg", "-m", "--runtime-arg", "awslambdaric"])
        .args(["--runtime-arg", "handler.fn", "--handler", "handler.fn"])
        .arg("--task-root")
        .arg(task.path())
        .arg("--env")
        .arg(format!(
            "AWS_LAMBDA_EXEC_WRAPPER={}",
            wrapper_script().display()
        ))
        .args(["--env", &format!("EGRESS_WARDEN_PROXY_PORT={proxy_port}")])
        .args(["--env", &format!("EGRESS_WARDEN_DNS_PORT={}", free_port())])
        .args(["--env", "EGRESS_WARDEN_DNS_UPSTREAMS=127.0.0.1:1"])
        .args(["--env", "EGRESS_WARDEN_ALLOW=127.0.0.0/8"])
        .args(["--invoke", &serde_json::json!({ "url": url }).to_string()])
        .arg("--emf-json")
        .arg(&emf_json);
    let mut run = Captured::spawn("lambda-emulator", cmd, true);
    let status = run.wait_exit(LIMIT);
    let logs = run.logs();
    assert!(
        status.is_some_and(|s| s.success()),
        "lambda-emulator: {status:?}\n{logs}"
    );

    // The answer follows the invoke's line: `== invoke 1/1 <id>: success in …`.
    let out = run.out.snapshot();
    let at = out
        .iter()
        .position(|l| l.starts_with("== invoke 1/1 ") && l.contains(": success in "))
        .unwrap_or_else(|| panic!("no successful invoke\n{logs}"));
    let answer: Value = out
        .get(at + 1)
        .and_then(|l| serde_json::from_str(l.trim()).ok())
        .unwrap_or_else(|| panic!("no JSON answer after the invoke line\n{logs}"));
    let root = std::fs::canonicalize(task.path()).expect("task root");
    let root = root.to_str().expect("utf-8 path");
    assert_eq!(answer["cwd"], root, "{logs}");
    assert_eq!(answer["task_root"], root, "{logs}");
    assert_eq!(answer["handler"], "handler.fn", "{logs}");
    assert_eq!(
        answer["http_proxy"],
        format!("http://127.0.0.1:{proxy_port}"),
        "the wrapper exports the proxy\n{logs}"
    );
    assert_eq!(answer["origin"]["path"], "/hello", "{logs}");
    assert!(
        answer["origin"]["via"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "the origin saw the proxy's Via header\n{logs}"
    );

    let emf: Value = serde_json::from_str(
        &std::fs::read_to_string(&emf_json).unwrap_or_else(|e| panic!("{e}\n{logs}")),
    )
    .expect("--emf-json is JSON");
    let totals = &emf["egress-warden"]["totals"];
    assert!(
        totals["requests"].as_f64().is_some_and(|n| n >= 1.0),
        "EMF counts the request: {totals}\n{logs}"
    );
    assert_eq!(totals["invocations"].as_f64(), Some(1.0), "{totals}");
    assert!(
        out.iter()
            .any(|l| l.starts_with("== EMF of egress-warden: ")),
        "the emulator prints the EMF totals\n{logs}"
    );
}
