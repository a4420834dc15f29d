//! A custom runtime for the emulator's self-tests (std only, blocking HTTP): answers every
//! invoke with `{"echo": event, "env": {...}}`. An event `{"crash": true}` makes it exit 3;
//! `FAKE_RT_MODE=init-error` posts `/runtime/init/error` and exits 1.

use serde_json::{json, Value};
use warden_tests::blocking_http::request;

fn main() {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").unwrap_or_default();
    println!(
        "runtime starting, handler={}",
        std::env::var("_HANDLER").unwrap_or_default()
    );
    if std::env::var("FAKE_RT_MODE").as_deref() == Ok("init-error") {
        let body =
            json!({"errorMessage": "cannot start", "errorType": "Runtime.TestInit"}).to_string();
        let r = request(
            &api,
            "POST",
            "/2018-06-01/runtime/init/error",
            &[("Lambda-Runtime-Function-Error-Type", "Runtime.TestInit")],
            body.as_bytes(),
        );
        println!("init/error -> {}", r.map(|r| r.status).unwrap_or(0));
        std::process::exit(1);
    }
    loop {
        let r = match request(&api, "GET", "/2018-06-01/runtime/invocation/next", &[], b"") {
            Ok(r) if r.status == 200 => r,
            Ok(r) => {
                eprintln!("next refused: {} {}", r.status, r.text());
                std::process::exit(2);
            }
            Err(e) => {
                eprintln!("next failed: {e}");
                std::process::exit(2);
            }
        };
        let id = r
            .header("Lambda-Runtime-Aws-Request-Id")
            .unwrap_or_default()
            .to_string();
        let event: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        println!("invoke {id}");
        if event["crash"].as_bool() == Some(true) {
            std::process::exit(3);
        }
        let env = |k: &str| std::env::var(k).ok();
        let body = json!({
            "echo": event,
            "deadlineMs": r.header("Lambda-Runtime-Deadline-Ms"),
            "arn": r.header("Lambda-Runtime-Invoked-Function-Arn"),
            "traceId": r.header("Lambda-Runtime-Trace-Id"),
            "env": {
                "WRAPPED": env("WRAPPED"),
                "AWS_LAMBDA_FUNCTION_NAME": env("AWS_LAMBDA_FUNCTION_NAME"),
                "AWS_LAMBDA_INITIALIZATION_TYPE": env("AWS_LAMBDA_INITIALIZATION_TYPE"),
                "TZ": env("TZ"),
                "_HANDLER": env("_HANDLER"),
                "USER_VAR": env("USER_VAR"),
            }
        })
        .to_string();
        let path = format!("/2018-06-01/runtime/invocation/{id}/response");
        if let Err(e) = request(&api, "POST", &path, &[], body.as_bytes()) {
            eprintln!("response failed: {e}");
            std::process::exit(2);
        }
    }
}
