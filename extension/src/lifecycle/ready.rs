//! The readiness file: how the exec wrapper (`/opt/egress-warden-wrapper`) learns that the proxy
//! is really listening before it points the runtime's HTTP clients at it.
//!
//! Once the proxy listener is bound (before registering, so before Lambda starts the runtime),
//! the extension writes `/tmp/.egress-warden/proxy-<port>` holding one line `<port> <pid>`,
//! atomically (a temporary file renamed into place). The wrapper exports the proxy variables
//! only when that file exists, names the same port and the process is alive. The file is
//! removed at start (whatever an earlier life of the extension left behind) and when the
//! extension ends; a crash leaves it naming a dead process, which the wrapper rejects.
//!
//! `/tmp` is shared by the extensions and the function in Lambda; the port in the file name
//! keeps several local environments on one machine (tests) apart.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where the readiness files live (the wrapper has the same path).
pub(super) const DIR: &str = "/tmp/.egress-warden";

fn path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("proxy-{port}"))
}

/// Removes the file for `port` left by an earlier life (a restart may reuse the PID it
/// names, so it must not survive a proxy that fails to bind). Best effort.
pub(super) fn clear(dir: &Path, port: u16) {
    let file = path(dir, port);
    match std::fs::remove_file(&file) {
        Ok(()) => tracing::debug!("removed a stale {}", file.display()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!("cannot remove a stale {}: {err}", file.display()),
    }
}

/// The published readiness file; removed when dropped (if it is still ours).
#[derive(Debug)]
pub(super) struct ReadyFile {
    path: PathBuf,
    contents: String,
}

impl ReadyFile {
    /// Writes `<port> <pid>` for the proxy listening on `port`.
    pub(super) fn publish(dir: &Path, port: u16) -> io::Result<ReadyFile> {
        std::fs::create_dir_all(dir)?;
        let pid = std::process::id();
        let contents = format!("{port} {pid}\n");
        let file = path(dir, port);
        let tmp = dir.join(format!(".proxy-{port}.{pid}.tmp"));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &file));
        if let Err(err) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
        Ok(ReadyFile {
            path: file,
            contents,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        // Another process may have taken the file over since (a second environment on the
        // same machine): only ours is removed.
        if std::fs::read_to_string(&self.path).is_ok_and(|c| c == self.contents) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("egress-warden-ready-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn publishes_port_and_pid_and_removes_the_file_when_dropped() {
        let dir = scratch("publish");
        let ready = ReadyFile::publish(&dir, 4128).expect("publish");
        assert_eq!(ready.path(), dir.join("proxy-4128"));
        let text = std::fs::read_to_string(ready.path()).expect("written");
        assert_eq!(text, format!("4128 {}\n", std::process::id()));
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["proxy-4128"]);
        drop(ready);
        assert!(!dir.join("proxy-4128").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_taken_over_by_another_process_is_left_alone() {
        let dir = scratch("taken");
        let ready = ReadyFile::publish(&dir, 4129).expect("publish");
        std::fs::write(ready.path(), "4129 1\n").expect("overwrite");
        drop(ready);
        assert_eq!(
            std::fs::read_to_string(dir.join("proxy-4129")).expect("kept"),
            "4129 1\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn clear_removes_a_stale_file_and_ignores_a_missing_one() {
        let dir = scratch("clear");
        clear(&dir, 4130);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("proxy-4130"), "4130 99999999\n").expect("stale");
        std::fs::write(dir.join("proxy-4131"), "4131 1\n").expect("other port");
        clear(&dir, 4130);
        assert!(!dir.join("proxy-4130").exists());
        assert!(
            dir.join("proxy-4131").exists(),
            "other ports are not touched"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
