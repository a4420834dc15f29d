//! curl as the test's HTTP client (what a function's tools would use), bounded at 15 s.

use std::process::Command;

/// Runs `curl -sS` with `args`: the HTTP status (0 when curl got none), the seconds curl
/// measured for the whole transfer, and the body.
pub fn curl(args: &[&str]) -> (u16, f64, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "15",
            "-w",
            "\n%{http_code} %{time_total}",
        ])
        .args(args)
        .output()
        .expect("curl is installed (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split_whitespace();
    let code = tail.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let secs = tail.next().and_then(|t| t.parse().ok()).unwrap_or(f64::NAN);
    (code, secs, body.to_string())
}
