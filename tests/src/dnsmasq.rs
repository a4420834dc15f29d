//! A real dnsmasq on 127.0.0.1 as a test's DNS upstream: authoritative for `.test` (nothing
//! is ever forwarded), with the records and options the test gives, and a query log that tells
//! how often it was asked. Stopped (and its log removed) on drop.

use crate::warden::free_port;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dnsmasq {
    child: Child,
    log: PathBuf,
    pub port: u16,
}

impl Dnsmasq {
    /// Starts dnsmasq with `options` (e.g. `--host-record=api.test,127.0.0.2`) and waits,
    /// bounded, until it answers.
    pub fn start(options: &[String]) -> Result<Dnsmasq, String> {
        Dnsmasq::start_on(free_port(), options)
    }

    /// The same on a given port (a restart where the previous one served).
    pub fn start_on(port: u16, options: &[String]) -> Result<Dnsmasq, String> {
        let log =
            std::env::temp_dir().join(format!("warden-dnsmasq-{}-{port}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
                "--pid-file=",
                "--local=/test/",
                "--log-queries",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--log-facility={}", log.display()))
            .args(options)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("dnsmasq (apt-get install dnsmasq): {e}"))?;
        let dnsmasq = Dnsmasq { child, log, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if answers(port) {
                return Ok(dnsmasq);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("dnsmasq did not answer within 10 s".into())
    }
}

impl Dnsmasq {
    /// How many `query[RTYPE] name` lines dnsmasq has logged.
    pub fn queries(&self, rtype: &str, name: &str) -> usize {
        let needle = format!("query[{rtype}] {name} from");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether a query for `ready.test` gets any answer (NXDOMAIN included) within 300 ms.
fn answers(port: u16) -> bool {
    let mut query = vec![0x52, 0x44, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5];
    query.extend_from_slice(b"ready\x04test\x00\x00\x01\x00\x01");
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(300)));
    let mut buf = [0u8; 512];
    socket.send_to(&query, ("127.0.0.1", port)).is_ok()
        && socket
            .recv_from(&mut buf)
            .is_ok_and(|(len, _)| len >= 2 && buf[..2] == query[..2])
}
