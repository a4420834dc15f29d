//! The Python pieces of the end-to-end tests: the interpreter, and `tests/proxy/upstream.py`
//! (a loopback HTTP or HTTPS upstream) as a child process ended with the value that owns it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::KillOnDrop;
use crate::warden::workspace_root;

/// The full path of the `python3` on PATH (so a pyenv shim is resolved once).
pub fn python3() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is installed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `tests/proxy/`: the Python runtime, upstream and certificate script.
pub fn proxy_dir() -> PathBuf {
    workspace_root().join("tests").join("proxy")
}

/// A throw-away CA and a server certificate for localhost and 127.0.0.1-3 in `dir`
/// (`make-certs.sh`: ca.pem, server.pem, server.key).
pub fn make_certs(dir: &Path) {
    let ok = Command::new("sh")
        .arg(proxy_dir().join("make-certs.sh"))
        .arg(dir)
        .status()
        .expect("sh make-certs.sh")
        .success();
    assert!(ok, "make-certs.sh failed (openssl installed?)");
}

/// `upstream.py` on 127.0.0.2 (TLS with `certs`' server.pem/server.key when given): the
/// process and its port.
pub fn upstream(name: &str, certs: Option<&Path>) -> (KillOnDrop, u16) {
    upstream_on("127.0.0.2", name, certs)
}

/// `upstream.py` on another loopback address.
pub fn upstream_on(host: &str, name: &str, certs: Option<&Path>) -> (KillOnDrop, u16) {
    let mut cmd = Command::new(python3());
    cmd.arg(proxy_dir().join("upstream.py"))
        .args(["--host", host, "--name", name]);
    if let Some(dir) = certs {
        cmd.arg("--tls")
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"));
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("start upstream.py");
    let stdout = child.stdout.take().expect("stdout");
    let proc = KillOnDrop(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("upstream port line");
    let port = serde_json::from_str::<serde_json::Value>(&line).expect("port json")["port"]
        .as_u64()
        .expect("port") as u16;
    (proc, port)
}
