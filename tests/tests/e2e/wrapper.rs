//! The exec wrapper (`layer/egress-warden-wrapper`, `AWS_LAMBDA_EXEC_WRAPPER`), run for real
//! with `sh` (and `bash`, the /bin/sh of Amazon Linux) in front of `env`, exactly as Lambda
//! runs it in front of the runtime's command line; then in front of the demo function under
//! the emulator, with the real extension listening, or not.
//!
//! The wrapper exports the proxy only when the extension's readiness file
//! (`/tmp/.egress-warden/proxy-<port>`, "<port> <pid>") names a live process. The tests of the
//! variables themselves publish that file for a port they hold, naming this test process.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use warden_tests::emf::EmfValidator;
use warden_tests::emulator::{Emulator, EmulatorConfig, Runtime, RUNTIME_NAME};
use warden_tests::prerequisite;
use warden_tests::warden::{
    demo_function_binary, free_port, ready_file, shut_down_cleanly, started_through_init,
    wrapper_script, ExtensionsDir, EXTENSION_NAME,
};

const DEFAULT_PORT: u16 = 3128;

fn wrapper() -> PathBuf {
    wrapper_script()
}

/// A proxy port that is "listening" for the wrapper: a listener held on it (so no other test
/// picks it) and its readiness file naming this process; the file goes when dropped.
struct Ready {
    port: u16,
    _listener: Option<TcpListener>,
}

impl Ready {
    fn new() -> Ready {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        Ready::publish(port, Some(listener))
    }

    /// The default port, 3128: only the file (whatever listens there, if anything).
    fn default_port() -> Ready {
        Ready::publish(DEFAULT_PORT, None)
    }

    fn publish(port: u16, listener: Option<TcpListener>) -> Ready {
        let file = ready_file(port);
        let dir = file.parent().expect("ready dir");
        std::fs::create_dir_all(dir).expect("create the readiness directory");
        let tmp = dir.join(format!(".test-{port}.{}", std::process::id()));
        std::fs::write(&tmp, format!("{port} {}\n", std::process::id())).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
        Ready {
            port,
            _listener: listener,
        }
    }

    fn proxy(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The base environment, with `EGRESS_WARDEN_PROXY_PORT` naming this port.
    fn env(&self) -> Vec<(&'static str, String)> {
        self.with(&[])
    }

    fn with(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let port = self.port.to_string();
        let mut v = with(&[("EGRESS_WARDEN_PROXY_PORT", port.as_str())]);
        for (k, val) in extra {
            v.retain(|(key, _)| key != k);
            v.push((*k, val.to_string()));
        }
        v
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        let file = ready_file(self.port);
        let ours = format!("{} {}\n", self.port, std::process::id());
        if std::fs::read_to_string(&file).is_ok_and(|c| c == ours) {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Shells to run the wrapper with: `sh` always, `bash` too where it is installed (required
/// under CI: see [`prerequisite`]).
fn shells() -> Vec<&'static str> {
    let mut v = vec!["sh"];
    let bash = Command::new("bash")
        .args(["-c", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())
        .and_then(|s| s.success().then_some(()).ok_or(s.to_string()))
        .map_err(|e| format!("cannot run bash ({e}): apt-get install bash"));
    if prerequisite("bash", bash).is_some() {
        v.push("bash");
    }
    v
}

fn base_env() -> Vec<(&'static str, String)> {
    vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001".to_string()),
    ]
}

/// Runs `<shell> <wrapper> <cmd...>` with exactly `vars` in the environment.
fn run_with(shell: &str, vars: &[(&str, String)], cmd: &[&str]) -> Output {
    let out = Command::new(shell)
        .arg(wrapper())
        .args(cmd)
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {shell} {}: {e}", wrapper().display()));
    out
}

fn parse_env0(stdout: &[u8]) -> BTreeMap<String, String> {
    stdout
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=').expect("env -0 prints NAME=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The environment the runtime gets behind the wrapper.
fn wrapped_env(shell: &str, vars: &[(&str, String)]) -> BTreeMap<String, String> {
    let out = run_with(shell, vars, &["env", "-0"]);
    assert!(
        out.status.success(),
        "wrapper under {shell} failed: {:?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "wrapper under {shell} wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_env0(&out.stdout)
}

/// The environment the same shell passes on without the wrapper (it may add PWD, SHLVL...).
fn plain_env(shell: &str, vars: &[(&str, String)]) -> BTreeMap<String, String> {
    let out = Command::new(shell)
        .args(["-c", "exec env -0"])
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run shell");
    assert!(out.status.success());
    parse_env0(&out.stdout)
}

/// The environment the runtime gets when the wrapper leaves it direct: exactly what the shell
/// passes on without the wrapper, and the one line on stderr saying why (returned).
fn direct_env(shell: &str, vars: &[(&str, String)]) -> String {
    let out = run_with(shell, vars, &["env", "-0"]);
    assert!(out.status.success(), "wrapper under {shell}: {out:?}");
    assert_eq!(
        parse_env0(&out.stdout),
        plain_env(shell, vars),
        "{shell}: environment changed although the proxy is not listening"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "{shell}: one line on stderr: {stderr:?}"
    );
    assert!(
        stderr.starts_with("egress-warden-wrapper: proxy not listening on 127.0.0.1:")
            && stderr
                .trim_end()
                .ends_with("; not pointing HTTP clients at it"),
        "{shell}: {stderr:?}"
    );
    stderr
}

/// Removes a file when the test ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A PID that was just in use and no longer is.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("reap true");
    pid
}

fn with(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut v = base_env();
    for (k, val) in extra {
        v.retain(|(key, _)| key != k);
        v.push((*k, val.to_string()));
    }
    v
}

fn list(v: &str) -> Vec<&str> {
    v.split(',').map(str::trim).collect()
}

fn get<'a>(env: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    env.get(k)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{k} not exported; environment: {env:#?}"))
}

#[test]
fn wrapper_is_an_executable_posix_sh_script() {
    let path = wrapper();
    let meta = std::fs::metadata(&path).expect("layer/egress-warden-wrapper exists");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o755,
        "layer/egress-warden-wrapper must be mode 0755"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("#!/bin/sh\n"),
        "wrapper must start with #!/bin/sh"
    );
    // Lambda execs the wrapper path itself: the shebang must work.
    let ready = Ready::new();
    let out = Command::new(&path)
        .args(["env", "-0"])
        .env_clear()
        .envs(ready.env())
        .output()
        .expect("exec the wrapper directly");
    assert!(out.status.success(), "{:?}", out);
    assert_eq!(get(&parse_env0(&out.stdout), "HTTPS_PROXY"), ready.proxy());
    for shell in shells() {
        let out = Command::new(shell)
            .args(["-n"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell} -n: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn exports_proxy_settings_when_the_proxy_listens() {
    let ready = Ready::new();
    let port = ready.port;
    for shell in shells() {
        let env = wrapped_env(shell, &ready.env());
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            assert_eq!(get(&env, k), ready.proxy(), "{k} under {shell}");
        }
        for k in ["NO_PROXY", "no_proxy"] {
            let entries = list(get(&env, k));
            for want in ["127.0.0.1", "localhost", "169.254.0.0/16"] {
                assert!(entries.contains(&want), "{k}={entries:?} lacks {want}");
            }
            // The Runtime API host (127.0.0.1 here) is not listed twice.
            assert_eq!(
                entries.iter().filter(|e| **e == "127.0.0.1").count(),
                1,
                "{k}={entries:?}"
            );
        }
        assert_eq!(get(&env, "NODE_USE_ENV_PROXY"), "1");
        let jto = get(&env, "JAVA_TOOL_OPTIONS");
        for want in [
            "-Dhttp.proxyHost=127.0.0.1".to_string(),
            format!("-Dhttp.proxyPort={port}"),
            "-Dhttps.proxyHost=127.0.0.1".to_string(),
            format!("-Dhttps.proxyPort={port}"),
        ] {
            assert!(
                jto.split(' ').any(|o| o == want),
                "JAVA_TOOL_OPTIONS={jto:?} lacks {want}"
            );
        }
        let nph = jto
            .split(' ')
            .find_map(|o| o.strip_prefix("-Dhttp.nonProxyHosts="))
            .unwrap_or_else(|| panic!("no -Dhttp.nonProxyHosts in {jto:?}"));
        let hosts: Vec<&str> = nph.split('|').collect();
        for want in ["localhost", "127.*", "169.254.*"] {
            assert!(
                hosts.contains(&want),
                "nonProxyHosts {hosts:?} lacks {want}"
            );
        }
        // Nothing else changes: the rest of the environment is passed through.
        assert_eq!(get(&env, "AWS_LAMBDA_RUNTIME_API"), "127.0.0.1:9001");
        assert_eq!(get(&env, "PATH"), "/usr/local/bin:/usr/bin:/bin");
    }
}

#[test]
fn port_comes_from_egress_warden_proxy_port() {
    let ready = Ready::new();
    let port = ready.port.to_string();
    let padded = format!("00{port}");
    for shell in shells() {
        for value in [&port, &padded] {
            let env = wrapped_env(shell, &with(&[("EGRESS_WARDEN_PROXY_PORT", value)]));
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                assert_eq!(get(&env, k), ready.proxy(), "{k} under {shell}");
            }
            let jto = get(&env, "JAVA_TOOL_OPTIONS");
            assert!(
                jto.contains(&format!("-Dhttp.proxyPort={port}"))
                    && jto.contains(&format!("-Dhttps.proxyPort={port}"))
            );
        }
    }
}

#[test]
fn the_default_port_is_3128() {
    let _ready = Ready::default_port();
    for shell in shells() {
        // Unset, or empty (which means the default too).
        for vars in [base_env(), with(&[("EGRESS_WARDEN_PROXY_PORT", "")])] {
            let env = wrapped_env(shell, &vars);
            assert_eq!(get(&env, "HTTPS_PROXY"), "http://127.0.0.1:3128");
            assert!(get(&env, "JAVA_TOOL_OPTIONS").contains("-Dhttp.proxyPort=3128"));
        }
    }
}

#[test]
fn without_the_extensions_readiness_file_clients_stay_direct() {
    // The port is held, as a foreign listener would: only the file says the proxy is ours.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let file = ready_file(port);
    let _ = std::fs::remove_file(&file);
    let vars = with(&[
        ("EGRESS_WARDEN_PROXY_PORT", &port.to_string()),
        ("NO_PROXY", "a.example"),
        ("JAVA_TOOL_OPTIONS", "-Xss1m"),
    ]);
    for shell in shells() {
        let why = direct_env(shell, &vars);
        assert!(
            why.contains(&format!("127.0.0.1:{port} "))
                && why.contains(&file.display().to_string()),
            "{why:?}"
        );
    }
}

#[test]
fn a_stale_readiness_file_keeps_clients_direct() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let file = ready_file(port);
    std::fs::create_dir_all(file.parent().expect("dir")).expect("dir");
    let _cleanup = RemoveOnDrop(file.clone());
    let vars = with(&[("EGRESS_WARDEN_PROXY_PORT", &port.to_string())]);
    let me = std::process::id();
    let dead = dead_pid();
    let cases = [
        // The extension that wrote it is gone (crashed, or an earlier life).
        (format!("{port} {dead}\n"), format!("pid {dead}")),
        // Written for another port.
        (
            format!("{} {me}\n", port.wrapping_add(1)),
            "names port".to_string(),
        ),
        // Not a process id (kill -0 -1 would succeed for any process).
        (format!("{port} -1\n"), "names no process".to_string()),
        (format!("{port} 0\n"), "names no process".to_string()),
        (format!("{port}\n"), "names no process".to_string()),
        (String::new(), "names port none".to_string()),
    ];
    for (contents, reason) in &cases {
        std::fs::write(&file, contents).expect("write the stale file");
        for shell in shells() {
            let why = direct_env(shell, &vars);
            assert!(why.contains(reason.as_str()), "{contents:?}: {why:?}");
        }
    }
    // The same file naming a live process is trusted (no trailing newline needed).
    std::fs::write(&file, format!("{port} {me}")).expect("write");
    for shell in shells() {
        let env = wrapped_env(shell, &vars);
        assert_eq!(get(&env, "HTTP_PROXY"), format!("http://127.0.0.1:{port}"));
    }
}

#[test]
fn no_proxy_keeps_the_runtime_api_host_direct() {
    let ready = Ready::new();
    let cases = [
        ("169.254.100.1:9001", "169.254.100.1"),
        ("runtime.internal:9001", "runtime.internal"),
        ("http://127.0.0.1:9000/.rt", "127.0.0.1"),
        ("http://[::1]:9000/.rt", "::1"),
    ];
    for shell in shells() {
        for (api, host) in cases {
            let env = wrapped_env(shell, &ready.with(&[("AWS_LAMBDA_RUNTIME_API", api)]));
            for k in ["NO_PROXY", "no_proxy"] {
                let v = get(&env, k);
                assert!(
                    list(v).contains(&host),
                    "{shell}: AWS_LAMBDA_RUNTIME_API={api}: {k}={v:?} lacks {host}"
                );
            }
        }
    }
}

#[test]
fn user_no_proxy_is_appended_to_not_replaced() {
    let ready = Ready::new();
    for shell in shells() {
        let env = wrapped_env(
            shell,
            &ready.with(&[("NO_PROXY", ".corp.example,10.0.0.0/8,localhost")]),
        );
        for k in ["NO_PROXY", "no_proxy"] {
            let entries = list(get(&env, k));
            assert_eq!(
                &entries[..3],
                &[".corp.example", "10.0.0.0/8", "localhost"],
                "{k} must start with the user's list"
            );
            assert!(entries.contains(&"127.0.0.1") && entries.contains(&"169.254.0.0/16"));
            assert_eq!(entries.iter().filter(|e| **e == "localhost").count(), 1);
        }
        // Both spellings set by the user: each keeps its own list.
        let env = wrapped_env(
            shell,
            &ready.with(&[("NO_PROXY", "upper.example"), ("no_proxy", "lower.example")]),
        );
        assert!(get(&env, "NO_PROXY").starts_with("upper.example,"));
        assert!(get(&env, "no_proxy").starts_with("lower.example,"));
        assert!(!get(&env, "NO_PROXY").contains("lower.example"));
    }
}

#[test]
fn user_proxy_settings_are_never_overridden() {
    let ready = Ready::new();
    let port = ready.port;
    for shell in shells() {
        // The user's HTTPS_PROXY wins, for both spellings, and Java gets no https proxy of ours.
        let env = wrapped_env(
            shell,
            &ready.with(&[("HTTPS_PROXY", "http://corp-proxy:8080")]),
        );
        assert_eq!(get(&env, "HTTPS_PROXY"), "http://corp-proxy:8080");
        assert_eq!(get(&env, "https_proxy"), "http://corp-proxy:8080");
        assert_eq!(get(&env, "HTTP_PROXY"), ready.proxy());
        assert_eq!(get(&env, "http_proxy"), ready.proxy());
        let jto = get(&env, "JAVA_TOOL_OPTIONS");
        assert!(!jto.contains("-Dhttps.proxy"), "{jto:?}");
        assert!(jto.contains("-Dhttp.proxyHost=127.0.0.1"), "{jto:?}");

        // Lower-case only, and both spellings with different values: all kept as set.
        let env = wrapped_env(shell, &ready.with(&[("http_proxy", "http://lower:1")]));
        assert_eq!(get(&env, "http_proxy"), "http://lower:1");
        assert_eq!(get(&env, "HTTP_PROXY"), "http://lower:1");
        let env = wrapped_env(
            shell,
            &ready.with(&[
                ("HTTP_PROXY", "http://upper:1"),
                ("http_proxy", "http://lower:2"),
            ]),
        );
        assert_eq!(get(&env, "HTTP_PROXY"), "http://upper:1");
        assert_eq!(get(&env, "http_proxy"), "http://lower:2");

        // NODE_USE_ENV_PROXY the user set (even to 0) stays.
        let env = wrapped_env(shell, &ready.with(&[("NODE_USE_ENV_PROXY", "0")]));
        assert_eq!(get(&env, "NODE_USE_ENV_PROXY"), "0");

        // JAVA_TOOL_OPTIONS: appended to; a property group the user set is not added again.
        let user = "-Xmx512m -Dhttps.proxyHost=corp -Dhttps.proxyPort=8443 -Dfoo=a\\ b";
        let env = wrapped_env(shell, &ready.with(&[("JAVA_TOOL_OPTIONS", user)]));
        let jto = get(&env, "JAVA_TOOL_OPTIONS");
        assert!(jto.starts_with(user), "{jto:?}");
        assert_eq!(jto.matches("-Dhttps.proxyHost=").count(), 1, "{jto:?}");
        assert!(
            !jto.contains(&format!("-Dhttps.proxyPort={port}")),
            "{jto:?}"
        );
        assert!(
            jto.contains(&format!(
                "-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort={port}"
            )),
            "{jto:?}"
        );
        let user = "-Dhttp.nonProxyHosts=*.corp";
        let env = wrapped_env(shell, &ready.with(&[("JAVA_TOOL_OPTIONS", user)]));
        let jto = get(&env, "JAVA_TOOL_OPTIONS");
        assert_eq!(jto.matches("-Dhttp.nonProxyHosts=").count(), 1, "{jto:?}");
        assert!(jto.contains("-Dhttps.proxyHost=127.0.0.1"), "{jto:?}");
    }
}

#[test]
fn disabled_or_port_zero_passes_everything_through_untouched() {
    let ready = Ready::new();
    let user = [
        ("HTTPS_PROXY", "http://corp:1"),
        ("NO_PROXY", "a.example"),
        ("JAVA_TOOL_OPTIONS", "-Xss1m"),
    ];
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("EGRESS_WARDEN_PROXY_PORT", "0")],
        vec![("EGRESS_WARDEN_PROXY_PORT", "00")],
        vec![("EGRESS_WARDEN_DISABLE", "true")],
        vec![
            ("EGRESS_WARDEN_DISABLE", "TRUE"),
            ("EGRESS_WARDEN_PROXY_PORT", "4000"),
        ],
        // The extension switches the proxy off for an invalid port: so does the wrapper.
        vec![("EGRESS_WARDEN_PROXY_PORT", "http")],
        vec![("EGRESS_WARDEN_PROXY_PORT", "70000")],
    ];
    for shell in shells() {
        for case in &cases {
            for with_user in [false, true] {
                let mut extra: Vec<(&'static str, &str)> = case.clone();
                if with_user {
                    extra.extend(user);
                }
                let vars = with(&extra);
                let wrapped = wrapped_env(shell, &vars);
                let plain = plain_env(shell, &vars);
                assert_eq!(
                    wrapped, plain,
                    "{shell} with {extra:?}: environment changed"
                );
                assert!(!wrapped.contains_key("NODE_USE_ENV_PROXY"));
            }
        }
        // DISABLE=false is the default behaviour.
        let env = wrapped_env(shell, &ready.with(&[("EGRESS_WARDEN_DISABLE", "false")]));
        assert_eq!(get(&env, "HTTPS_PROXY"), ready.proxy());
    }
}

#[test]
fn arguments_are_passed_intact_and_the_command_replaces_the_wrapper() {
    let ready = Ready::new();
    let args = [
        "a b",
        "",
        "  two  spaces ",
        "*",
        "$HOME",
        "quote\"s'",
        "new\nline",
        "-e",
    ];
    for shell in shells() {
        for vars in [
            ready.env(),
            with(&[("EGRESS_WARDEN_DISABLE", "true")]),
            // Not listening: left direct, arguments intact all the same.
            with(&[("EGRESS_WARDEN_PROXY_PORT", "1")]),
        ] {
            let mut cmd = vec!["printf", "[%s]\\n"];
            cmd.extend(args);
            let out = run_with(shell, &vars, &cmd);
            assert!(out.status.success());
            let want: String = args.iter().map(|a| format!("[{a}]\n")).collect();
            assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{shell}");
        }

        // exec: the command runs in the wrapper's own process and its exit status is returned.
        let child = Command::new(shell)
            .arg(wrapper())
            .args(["sh", "-c", "echo $$; exit 7"])
            .env_clear()
            .envs(ready.env())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(7),
            "{shell}: exit status not passed on"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            pid.to_string(),
            "{shell}: the command did not replace the wrapper (exec)"
        );

        // No helper variables or functions leak into the runtime's environment.
        let env = wrapped_env(shell, &ready.env());
        let leaked: Vec<&String> = env.keys().filter(|k| k.starts_with("ew_")).collect();
        assert!(leaked.is_empty(), "{leaked:?}");
    }
}

// --- In front of the demo function, under the emulator, with the real extension --------------

const LIMIT: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

/// A loopback origin answering 200 `ok` to every request.
async fn origin() -> std::net::SocketAddr {
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the origin");
    let addr = origin.local_addr().expect("origin addr");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = origin.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    addr
}

/// egress-warden on `proxy_port` and the demo function behind the wrapper.
fn demo_config(d: &ExtensionsDir, proxy_port: u16) -> EmulatorConfig {
    d.proxy_config(proxy_port)
        .env("AWS_LAMBDA_EXEC_WRAPPER", wrapper().display().to_string())
        .runtime(Runtime::command(demo_function_binary()))
}

/// The demo's answer to `{"urls": [url]}`.
async fn fetch_through_the_function(emu: &mut Emulator, url: &str) -> Value {
    let out = emu
        .invoke_json(&json!({ "urls": [url] }))
        .await
        .expect("invoke");
    out.response_json()
        .unwrap_or_else(|| panic!("{:?}\nruntime: {:?}", out.result, emu.output(RUNTIME_NAME)))
}

fn wrapper_lines(emu: &Emulator) -> Vec<String> {
    emu.stderr_lines(RUNTIME_NAME)
        .into_iter()
        .filter(|l| l.starts_with("egress-warden-wrapper:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_extension_listening_the_function_goes_through_the_proxy() {
    bounded(async {
        let origin = origin().await;
        let d = ExtensionsDir::with_warden();
        let proxy = free_port();
        let mut emu = started_through_init(demo_config(&d, proxy)).await;
        // Written before registering, so before the runtime (and the wrapper) started.
        let pid = emu.pid(EXTENSION_NAME).expect("extension pid");
        assert_eq!(
            std::fs::read_to_string(ready_file(proxy)).expect("readiness file"),
            format!("{proxy} {pid}\n")
        );

        let body = fetch_through_the_function(&mut emu, &format!("http://{origin}/hello")).await;
        assert_eq!(body["proxy"], format!("http://127.0.0.1:{proxy}"), "{body}");
        let r = &body["results"][0];
        assert_eq!(r["via"], "proxy", "{body}");
        assert_eq!(r["status"], 200, "{body}");
        assert!(emu.invoke("{}").await.expect("invoke").is_success());
        assert_eq!(wrapper_lines(&emu), Vec::<String>::new());

        shut_down_cleanly(&mut emu).await;
        assert!(
            !ready_file(proxy).exists(),
            "the readiness file is removed when the extension ends"
        );
        // The request went through the proxy: it is counted.
        let v = EmfValidator::new();
        let requests: f64 = emu
            .stdout_lines(EXTENSION_NAME)
            .iter()
            .filter_map(|l| v.validate_line(l).ok())
            .filter_map(|d| d.metric_total("requests"))
            .sum();
        assert!(requests >= 1.0, "the proxied request is counted");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_proxy_port_taken_the_function_goes_direct_and_its_calls_succeed() {
    bounded(async {
        let origin = origin().await;
        // Another process listens on the proxy port: egress-warden cannot bind it.
        let squatter = TcpListener::bind("127.0.0.1:0").expect("bind");
        let proxy = squatter.local_addr().expect("addr").port();
        // A file left by an earlier life whose PID is alive again (here: this test process)
        // must not survive: the extension clears it before binding.
        std::fs::create_dir_all(ready_file(proxy).parent().expect("dir")).expect("dir");
        std::fs::write(
            ready_file(proxy),
            format!("{proxy} {}\n", std::process::id()),
        )
        .expect("stale file");
        let _cleanup = RemoveOnDrop(ready_file(proxy));

        let d = ExtensionsDir::with_warden();
        let mut emu = started_through_init(demo_config(&d, proxy)).await;
        let log = emu.stderr_lines(EXTENSION_NAME).join("\n");
        assert!(log.contains("the proxy is disabled"), "{log}");
        assert!(!ready_file(proxy).exists(), "stale readiness file cleared");

        let body = fetch_through_the_function(&mut emu, &format!("http://{origin}/direct")).await;
        assert_eq!(
            body["proxy"],
            Value::Null,
            "no HTTP_PROXY for the runtime: {body}"
        );
        let r = &body["results"][0];
        assert_eq!(r["via"], "direct", "{body}");
        assert_eq!(r["status"], 200, "{body}");
        let lines = wrapper_lines(&emu);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains(&format!("proxy not listening on 127.0.0.1:{proxy} "))
                && lines[0].ends_with("not pointing HTTP clients at it"),
            "{lines:?}"
        );

        shut_down_cleanly(&mut emu).await;
        drop(squatter);
    })
    .await
}

/// Node.js before 22.21 ignores the proxy variables: the wrapper says so once, naming what
/// works instead; newer Node runtimes (and other runtimes) get no such line.
#[test]
fn old_node_runtimes_are_told_their_clients_go_direct() {
    let ready = Ready::new();
    for shell in shells() {
        for (runtime, warned) in [
            ("AWS_Lambda_nodejs20.x", true),
            ("AWS_Lambda_nodejs18.x", true),
            ("AWS_Lambda_nodejs22.x", false),
            ("AWS_Lambda_nodejs24.x", false),
            ("AWS_Lambda_python3.12", false),
        ] {
            let out = run_with(
                shell,
                &ready.with(&[("AWS_EXECUTION_ENV", runtime)]),
                &["true"],
            );
            assert!(out.status.success(), "{shell} {runtime}: {out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("ignores HTTP_PROXY"))
                .collect();
            if warned {
                assert_eq!(lines.len(), 1, "{shell} {runtime}: {stderr}");
                assert!(lines[0].contains("route mode"), "{}", lines[0]);
                assert!(
                    lines[0].contains(&format!("127.0.0.1:{}", ready.port)),
                    "{}",
                    lines[0]
                );
            } else {
                assert!(lines.is_empty(), "{shell} {runtime}: {stderr}");
            }
        }
    }
}
