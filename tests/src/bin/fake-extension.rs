//! A scriptable external extension for the emulator's self-tests (std only, blocking HTTP).
//!
//! Registers under its file name (like a real one), prints what happens on stdout, and behaves
//! according to `FAKE_EXT_MODE`:
//! `normal` | `init-error` | `crash-before-register` | `never-next` | `ignore-shutdown` |
//! `exit-error-on-invoke` | `slow-ack` (`FAKE_EXT_ACK_MS`, default 50).
//! `FAKE_EXT_EVENTS` (default `INVOKE,SHUTDOWN`) is the registration. `FAKE_EXT_TELEMETRY=1`
//! subscribes to the Telemetry API (platform + function) and prints the record types it gets;
//! `FAKE_EXT_SCHEMA` (default `2022-12-13`) is the subscription's `schemaVersion`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::{json, Value};
use warden_tests::blocking_http::request;

fn main() {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").unwrap_or_default();
    let name = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "fake-extension".to_string());
    let mode = std::env::var("FAKE_EXT_MODE").unwrap_or_else(|_| "normal".to_string());
    let events: Vec<String> = std::env::var("FAKE_EXT_EVENTS")
        .unwrap_or_else(|_| "INVOKE,SHUTDOWN".to_string())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    println!("started as {name} mode={mode}");
    eprintln!(
        "env AWS_LAMBDA_FUNCTION_NAME={}",
        std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default()
    );

    if mode == "crash-before-register" {
        eprintln!("crashing on purpose");
        std::process::exit(7);
    }

    let body = json!({ "events": events }).to_string();
    let r = match request(
        &api,
        "POST",
        "/2020-01-01/extension/register",
        &[
            ("Lambda-Extension-Name", &name),
            ("Lambda-Extension-Accept-Feature", "accountId"),
        ],
        body.as_bytes(),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("register failed: {e}");
            std::process::exit(2);
        }
    };
    if r.status != 200 {
        eprintln!("register refused: {} {}", r.status, r.text());
        std::process::exit(2);
    }
    let id = r
        .header("Lambda-Extension-Identifier")
        .unwrap_or_default()
        .to_string();
    println!("registered {}", r.text());

    if mode == "init-error" {
        let body = json!({"errorMessage": "bad config", "errorType": "Extension.ConfigInvalid"})
            .to_string();
        let r = request(
            &api,
            "POST",
            "/2020-01-01/extension/init/error",
            &[
                ("Lambda-Extension-Identifier", &id),
                (
                    "Lambda-Extension-Function-Error-Type",
                    "Extension.ConfigInvalid",
                ),
            ],
            body.as_bytes(),
        );
        println!("init/error -> {}", r.map(|r| r.status).unwrap_or(0));
        std::process::exit(3);
    }

    if std::env::var("FAKE_EXT_TELEMETRY").as_deref() == Ok("1") {
        subscribe_telemetry(&api, &id);
    }

    if mode == "never-next" {
        std::thread::sleep(Duration::from_secs(3600));
    }

    loop {
        let r = match request(
            &api,
            "GET",
            "/2020-01-01/extension/event/next",
            &[("Lambda-Extension-Identifier", &id)],
            b"",
        ) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("next failed: {e}");
                std::process::exit(4);
            }
        };
        if r.status != 200 {
            eprintln!("next refused: {} {}", r.status, r.text());
            std::process::exit(4);
        }
        let ev: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        println!("event {ev}");
        match ev["eventType"].as_str() {
            Some("SHUTDOWN") => {
                if mode == "ignore-shutdown" {
                    std::thread::sleep(Duration::from_secs(3600));
                }
                println!("exiting");
                std::process::exit(0);
            }
            Some("INVOKE") => {
                if mode == "exit-error-on-invoke" {
                    let r = request(
                        &api,
                        "POST",
                        "/2020-01-01/extension/exit/error",
                        &[
                            ("Lambda-Extension-Identifier", &id),
                            ("Lambda-Extension-Function-Error-Type", "Extension.Broken"),
                        ],
                        b"",
                    );
                    println!("exit/error -> {}", r.map(|r| r.status).unwrap_or(0));
                    std::process::exit(5);
                }
                if mode == "slow-ack" {
                    let ms = std::env::var("FAKE_EXT_ACK_MS")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(50);
                    std::thread::sleep(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
    }
}

fn subscribe_telemetry(api: &str, id: &str) {
    let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
        return;
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut len = 0usize;
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let batch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let types: Vec<String> = batch
                .as_array()
                .into_iter()
                .flatten()
                .map(|rec| rec["type"].as_str().unwrap_or("?").to_string())
                .collect();
            println!("telemetry {}", types.join(","));
            let mut s = r.into_inner();
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let body = json!({
        "schemaVersion": std::env::var("FAKE_EXT_SCHEMA").unwrap_or_else(|_| "2022-12-13".to_string()),
        "types": ["platform", "function"],
        "buffering": {"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25},
        "destination": {"protocol": "HTTP", "URI": format!("http://sandbox.localdomain:{port}/telemetry")}
    })
    .to_string();
    let r = request(
        api,
        "PUT",
        "/2022-07-01/telemetry",
        &[
            ("Lambda-Extension-Identifier", id),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    println!(
        "telemetry subscribe -> {}",
        r.map(|r| format!("{} {}", r.status, r.text()))
            .unwrap_or_default()
    );
}
