//! `scripts/demo`, end to end (it runs in seconds once the workspace is built): both runs
//! succeed, the table compares them, and the layer's run shows what it is for — far fewer DNS
//! queries and TLS handshakes, a faster first request, and the `cross_region` finding.
//!
//! Needs openssl and python3 with dnspython (scripts/setup) and the debug binaries:
//! `cargo build -p egress-warden -p warden-tests -p demo-function --bins`.

use std::process::Command;
use std::time::Duration;

use warden_tests::prerequisite;
use warden_tests::process::Captured;
use warden_tests::python::python3;
use warden_tests::warden::{target_dir, workspace_root};

const LIMIT: Duration = Duration::from_secs(60);

fn tools() -> Result<(), String> {
    let ok = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if !ok(Command::new("openssl").arg("version")) {
        return Err("openssl not found (apt-get install openssl)".into());
    }
    if !ok(Command::new(python3()).args(["-c", "import dns.message"])) {
        return Err("python3 cannot import dnspython (pip install dnspython)".into());
    }
    Ok(())
}

/// The two figures of a row of the summary table (`| name | without | with |`).
fn row<'a>(out: &'a [String], name: &str) -> (&'a str, &'a str) {
    let line = out
        .iter()
        .find(|l| l.starts_with(&format!("| {name} ")))
        .unwrap_or_else(|| panic!("no row {name:?} in the table"));
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    (cells[2], cells[3])
}

fn number(cell: &str) -> f64 {
    cell.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {cell:?}"))
}

#[test]
fn the_demo_shows_the_layer_at_work() {
    let Some(()) = prerequisite("openssl and dnspython", tools()) else {
        return;
    };
    for bin in ["egress-warden", "lambda-emulator", "bootstrap"] {
        let p = target_dir().join("debug").join(bin);
        assert!(
            p.is_file(),
            "{} not found: cargo build -p egress-warden -p warden-tests -p demo-function --bins",
            p.display()
        );
    }
    let mut cmd = Command::new(workspace_root().join("scripts").join("demo"));
    cmd.arg("--no-build")
        .env("CARGO_TARGET_DIR", target_dir())
        .current_dir(workspace_root());
    let mut demo = Captured::spawn("scripts/demo", cmd, true);
    let status = demo.wait_exit(LIMIT);
    let logs = demo.logs();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{logs}");
    let out = demo.out.snapshot();

    let (without, with) = row(&out, "DNS queries the resolver received");
    assert!(number(with) < number(without), "{logs}");
    let (without, with) = row(&out, "TLS handshakes (new connections)");
    assert!(number(with) < number(without), "{logs}");
    // The resolver alone makes the first request without the layer 80 ms slower.
    let (without, with) = row(&out, "first request");
    assert!(number(with) + 50.0 < number(without), "{logs}");
    let (_, with) = row(&out, "finding");
    assert_eq!(with, "cross_region", "{logs}");
    assert!(
        out.iter()
            .any(|l| l.starts_with("Finding: cross_region") && l.contains("eu-west-1")),
        "the finding is explained\n{logs}"
    );
}
