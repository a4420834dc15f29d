//! Launching children with Lambda's environment, capturing their output line by line,
//! recording how they end, and signalling them.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use super::state::{ProcInfo, Shared};
use super::types::{ExitInfo, OutputLine, ProtocolEvent, Stream};

/// Launches `program args…` as child `name`; returns its pid.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    name: &str,
    program: &Path,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
) -> io::Result<u32> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Own process group, so SIGKILL reaches whatever a wrapper started too.
        .process_group(0);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let spawned_at = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(
            shared.clone(),
            name.to_string(),
            Stream::Stdout,
            out,
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(
            shared.clone(),
            name.to_string(),
            Stream::Stderr,
            err,
        )));
    }
    {
        let mut st = shared.lock();
        st.procs.insert(
            name.to_string(),
            ProcInfo {
                pid,
                exit: None,
                killed: false,
                readers,
            },
        );
        if let Some(ext) = st.extensions.iter_mut().find(|e| e.name == name) {
            ext.spawned_at = Some(spawned_at);
        }
        if name == super::RUNTIME_NAME {
            st.runtime.started_at = Some(spawned_at);
        }
        shared.log(
            &mut st,
            ProtocolEvent::Spawn {
                name: name.to_string(),
                pid,
            },
        );
    }
    let shared2 = shared.clone();
    let name2 = name.to_string();
    tokio::spawn(async move {
        let status = child.wait().await;
        let at = Instant::now();
        let exit = match status {
            Ok(s) => ExitInfo {
                code: s.code(),
                signal: s.signal(),
            },
            Err(_) => ExitInfo {
                code: None,
                signal: None,
            },
        };
        let mut st = shared2.lock();
        if let Some(p) = st.procs.get_mut(&name2) {
            p.exit = Some((exit, at));
        }
        shared2.log(
            &mut st,
            ProtocolEvent::Exit {
                name: name2.clone(),
                code: exit.code,
                signal: exit.signal,
            },
        );
        drop(st);
        shared2.bump();
    });
    shared.bump();
    Ok(pid)
}

async fn read_lines<R: AsyncRead + Unpin>(shared: Arc<Shared>, name: String, stream: Stream, r: R) {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                if shared.cfg.echo_output {
                    use std::io::Write;
                    let tag = match stream {
                        Stream::Stdout => "",
                        Stream::Stderr => ":stderr",
                    };
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "[{name}{tag}] {text}");
                }
                let category = if name == super::RUNTIME_NAME {
                    "function"
                } else {
                    "extension"
                };
                shared
                    .telemetry
                    .emit(category, serde_json::Value::String(text.clone()));
                shared.push_output(
                    &name,
                    OutputLine {
                        at: shared.t0.elapsed(),
                        stream,
                        text,
                    },
                );
            }
        }
    }
}

/// Sends `sig` to child `name` if it is still running (`group`: to its whole process group).
pub(crate) fn signal(shared: &Shared, name: &str, sig: i32, group: bool) -> bool {
    let mut st = shared.lock();
    let pid = match st.procs.get_mut(name) {
        Some(p) if p.exit.is_none() && p.pid > 0 => {
            if sig == libc::SIGKILL {
                p.killed = true;
            }
            p.pid
        }
        _ => return false,
    };
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: plain kill(2)/killpg(2) on a child we launched and have not reaped yet.
    let rc = unsafe {
        if group {
            libc::killpg(pid, sig)
        } else {
            libc::kill(pid, sig)
        }
    };
    shared.log(
        &mut st,
        ProtocolEvent::Signal {
            name: name.to_string(),
            signal: sig,
        },
    );
    rc == 0
}
