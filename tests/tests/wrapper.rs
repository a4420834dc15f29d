//! The exec wrapper (`layer/egress-warden-wrapper`, `AWS_LAMBDA_EXEC_WRAPPER`), run for real
//! with `sh` (and `bash`, the /bin/sh of Amazon Linux) in front of `env`, exactly as Lambda
//! runs it in front of the runtime's command line.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const PROXY: &str = "http://127.0.0.1:3128";

fn wrapper() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../layer/egress-warden-wrapper")
}

/// Shells to run the wrapper with: `sh` always, `bash` too where it is installed.
fn shells() -> Vec<&'static str> {
    let mut v = vec!["sh"];
    if Command::new("bash")
        .args(["-c", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    {
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
    let out = Command::new(&path)
        .args(["env", "-0"])
        .env_clear()
        .envs(base_env())
        .output()
        .expect("exec the wrapper directly");
    assert!(out.status.success(), "{:?}", out);
    assert_eq!(get(&parse_env0(&out.stdout), "HTTPS_PROXY"), PROXY);
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
fn exports_proxy_settings_by_default() {
    for shell in shells() {
        let env = wrapped_env(shell, &base_env());
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            assert_eq!(get(&env, k), PROXY, "{k} under {shell}");
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
            "-Dhttp.proxyHost=127.0.0.1",
            "-Dhttp.proxyPort=3128",
            "-Dhttps.proxyHost=127.0.0.1",
            "-Dhttps.proxyPort=3128",
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
    for shell in shells() {
        let env = wrapped_env(shell, &with(&[("EGRESS_WARDEN_PROXY_PORT", "4567")]));
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            assert_eq!(get(&env, k), "http://127.0.0.1:4567", "{k} under {shell}");
        }
        let jto = get(&env, "JAVA_TOOL_OPTIONS");
        assert!(jto.contains("-Dhttp.proxyPort=4567") && jto.contains("-Dhttps.proxyPort=4567"));
        // An empty value means the default, like an unset one.
        let env = wrapped_env(shell, &with(&[("EGRESS_WARDEN_PROXY_PORT", "")]));
        assert_eq!(get(&env, "HTTPS_PROXY"), PROXY);
    }
}

#[test]
fn no_proxy_keeps_the_runtime_api_host_direct() {
    let cases = [
        ("169.254.100.1:9001", "169.254.100.1"),
        ("runtime.internal:9001", "runtime.internal"),
        ("http://127.0.0.1:9000/.rt", "127.0.0.1"),
        ("http://[::1]:9000/.rt", "::1"),
    ];
    for shell in shells() {
        for (api, host) in cases {
            let env = wrapped_env(shell, &with(&[("AWS_LAMBDA_RUNTIME_API", api)]));
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
    for shell in shells() {
        let env = wrapped_env(
            shell,
            &with(&[("NO_PROXY", ".corp.example,10.0.0.0/8,localhost")]),
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
            &with(&[("NO_PROXY", "upper.example"), ("no_proxy", "lower.example")]),
        );
        assert!(get(&env, "NO_PROXY").starts_with("upper.example,"));
        assert!(get(&env, "no_proxy").starts_with("lower.example,"));
        assert!(!get(&env, "NO_PROXY").contains("lower.example"));
    }
}

#[test]
fn user_proxy_settings_are_never_overridden() {
    for shell in shells() {
        // The user's HTTPS_PROXY wins, for both spellings, and Java gets no https proxy of ours.
        let env = wrapped_env(shell, &with(&[("HTTPS_PROXY", "http://corp-proxy:8080")]));
        assert_eq!(get(&env, "HTTPS_PROXY"), "http://corp-proxy:8080");
        assert_eq!(get(&env, "https_proxy"), "http://corp-proxy:8080");
        assert_eq!(get(&env, "HTTP_PROXY"), PROXY);
        assert_eq!(get(&env, "http_proxy"), PROXY);
        let jto = get(&env, "JAVA_TOOL_OPTIONS");
        assert!(!jto.contains("-Dhttps.proxy"), "{jto:?}");
        assert!(jto.contains("-Dhttp.proxyHost=127.0.0.1"), "{jto:?}");

        // Lower-case only, and both spellings with different values: all kept as set.
        let env = wrapped_env(shell, &with(&[("http_proxy", "http://lower:1")]));
        assert_eq!(get(&env, "http_proxy"), "http://lower:1");
        assert_eq!(get(&env, "HTTP_PROXY"), "http://lower:1");
        let env = wrapped_env(
            shell,
            &with(&[
                ("HTTP_PROXY", "http://upper:1"),
                ("http_proxy", "http://lower:2"),
            ]),
        );
        assert_eq!(get(&env, "HTTP_PROXY"), "http://upper:1");
        assert_eq!(get(&env, "http_proxy"), "http://lower:2");

        // NODE_USE_ENV_PROXY the user set (even to 0) stays.
        let env = wrapped_env(shell, &with(&[("NODE_USE_ENV_PROXY", "0")]));
        assert_eq!(get(&env, "NODE_USE_ENV_PROXY"), "0");

        // JAVA_TOOL_OPTIONS: appended to; a property group the user set is not added again.
        let user = "-Xmx512m -Dhttps.proxyHost=corp -Dhttps.proxyPort=8443 -Dfoo=a\\ b";
        let env = wrapped_env(shell, &with(&[("JAVA_TOOL_OPTIONS", user)]));
        let jto = get(&env, "JAVA_TOOL_OPTIONS");
        assert!(jto.starts_with(user), "{jto:?}");
        assert_eq!(jto.matches("-Dhttps.proxyHost=").count(), 1, "{jto:?}");
        assert!(!jto.contains("-Dhttps.proxyPort=3128"), "{jto:?}");
        assert!(
            jto.contains("-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=3128"),
            "{jto:?}"
        );
        let user = "-Dhttp.nonProxyHosts=*.corp";
        let env = wrapped_env(shell, &with(&[("JAVA_TOOL_OPTIONS", user)]));
        let jto = get(&env, "JAVA_TOOL_OPTIONS");
        assert_eq!(jto.matches("-Dhttp.nonProxyHosts=").count(), 1, "{jto:?}");
        assert!(jto.contains("-Dhttps.proxyHost=127.0.0.1"), "{jto:?}");
    }
}

#[test]
fn disabled_or_port_zero_passes_everything_through_untouched() {
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
        let env = wrapped_env(shell, &with(&[("EGRESS_WARDEN_DISABLE", "false")]));
        assert_eq!(get(&env, "HTTPS_PROXY"), PROXY);
    }
}

#[test]
fn arguments_are_passed_intact_and_the_command_replaces_the_wrapper() {
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
        for vars in [base_env(), with(&[("EGRESS_WARDEN_DISABLE", "true")])] {
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
            .envs(base_env())
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
        let env = wrapped_env(shell, &base_env());
        let leaked: Vec<&String> = env.keys().filter(|k| k.starts_with("ew_")).collect();
        assert!(leaked.is_empty(), "{leaked:?}");
    }
}
