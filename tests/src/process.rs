//! Child processes of a test, ended with the value that owns them (also when the test
//! panics): [`KillOnDrop`] for a server whose output does not matter, [`Captured`] for one
//! whose stdout and stderr the test reads while it runs.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wait::wait_until;

/// A child process, killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines a child writes, collected by a thread, readable while it runs.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(&self, r: impl Read + Send + 'static) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                match line {
                    Ok(l) => lines.lock().unwrap_or_else(|p| p.into_inner()).push(l),
                    Err(_) => break,
                }
            }
        });
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }
}

/// A child process with its stdout and stderr collected line by line; killed (with its
/// process group, when it leads one) when dropped.
pub struct Captured {
    name: &'static str,
    pub child: Child,
    group: bool,
    pub out: Lines,
    pub err: Lines,
}

impl Captured {
    /// Spawns `cmd` (stdin closed); `group`: in a process group of its own, so that the
    /// children it starts are ended with it.
    pub fn spawn(name: &'static str, mut cmd: Command, group: bool) -> Captured {
        if group {
            cmd.process_group(0);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (out, err) = (Lines::default(), Lines::default());
        out.follow(child.stdout.take().expect("piped stdout"));
        err.follow(child.stderr.take().expect("piped stderr"));
        Captured {
            name,
            child,
            group,
            out,
            err,
        }
    }

    /// Sends `sig` (a name for kill(1): "INT", "KILL"…) to the process, or to its group.
    pub fn signal(&self, sig: &str) {
        let target = if self.group {
            format!("-{}", self.child.id())
        } else {
            self.child.id().to_string()
        };
        let _ = Command::new("kill")
            .args(["-s", sig, "--", &target])
            .stderr(Stdio::null())
            .status();
    }

    /// Its exit status, once it has exited within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(within, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Its stdout and stderr so far, headed by its name, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}\n",
            self.name,
            self.out.text(),
            self.name,
            self.err.text()
        )
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal("KILL");
            let _ = self.child.kill();
            let _ = self.child.wait();
        } else if self.group {
            // What it started shares its group and may outlive it.
            self.signal("KILL");
        }
    }
}
