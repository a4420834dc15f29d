//! A network lab for tests: a Linux network namespace with a veth pair to the root namespace,
//! test-only prefixes, its own nftables firewall and its own processes (upstreams, a DNS
//! server), plus an optional userspace delay line for a real round-trip time (the kernel here
//! has no `netem`). Everything is removed when the [`Lab`] is dropped, also on panic.
//!
//! Addresses of lab `n` (one per live lab, claimed atomically through the veth name):
//! - "public" `198.18.n.0/25` (RFC 2544 benchmarking range, outside the VPC ranges), on the veth;
//! - "private" `10.250.n.0/24`, on the veth;
//! - "delayed public" `198.18.n.128/25`, routed through the delay line when there is one.
//!
//! The root side holds `.1` of each veth prefix, so the extension (in the root namespace)
//! reaches lab addresses directly and replies come back on the same path. Needs root,
//! `ip` (iproute2) and `nft`.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::warden::workspace_root;

/// How long a lab process may take to print its readiness line.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A throw-away CA and a certificate for the lab's names (`*.lab.test`) in `dir`:
/// `ca.pem`, `server.pem`, `server.key`.
pub fn make_lab_certs(dir: &Path) -> Result<(), String> {
    let ok = Command::new("sh")
        .arg(workspace_root().join("tests/proxy/make-certs.sh"))
        .arg(dir)
        .arg("DNS:api.lab.test,DNS:*.lab.test")
        .status()
        .map_err(|e| format!("make-certs.sh: {e}"))?
        .success();
    if ok {
        Ok(())
    } else {
        Err("make-certs.sh failed".into())
    }
}

/// Whether labs can be built here; if not, why and what to install (root, `ip netns`, `nft`).
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("a network-namespace lab needs root: run the tests as root".into());
    }
    for (tool, args, package) in [
        ("ip", &["netns", "list"][..], "iproute2"),
        ("nft", &["--version"][..], "nftables"),
    ] {
        let ok = Command::new(tool)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!(
                "a network-namespace lab needs a working `{tool}`: apt-get install {package}"
            ));
        }
    }
    Ok(())
}

/// Whether a delay line can be built (`/dev/net/tun`); if not, why and how to get it.
pub fn delay_line_available() -> Result<(), String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "a delay line needs /dev/net/tun ({e}): modprobe tun, or give the container the \
             device (--device /dev/net/tun)"
        )),
    }
}

/// Runs a command, returning its stdout or an error naming the command and its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

/// A process started by the lab; killed when the lab is dropped.
pub struct LabProcess {
    child: Child,
    /// The JSON readiness line it printed.
    pub ready: Value,
}

impl LabProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`).
    pub fn signal(&self, signal: i32) -> Result<(), String> {
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "kill {}: {}",
                self.child.id(),
                std::io::Error::last_os_error()
            ))
        }
    }

    /// The `port` of its readiness line.
    pub fn port(&self) -> Option<u16> {
        self.ready["port"].as_u64().map(|p| p as u16)
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd`, waits (bounded) for its first stdout line and parses it as JSON.
fn spawn_ready(mut cmd: Command, what: &str) -> Result<LabProcess, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Inherited: a lab process that fails says why in the test's output.
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start {what}: {e}"))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{what}: no stdout"));
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = tx.send(reader.read_line(&mut line).map(|_| line));
        // Keep draining so the process never blocks on a full pipe.
        let mut sink = String::new();
        while matches!(reader.read_line(&mut sink), Ok(n) if n > 0) {
            sink.clear();
        }
    });
    let mut proc = LabProcess {
        child,
        ready: Value::Null,
    };
    match rx.recv_timeout(READY_WITHIN) {
        Ok(Ok(line)) => match serde_json::from_str(&line) {
            Ok(v) => {
                proc.ready = v;
                Ok(proc)
            }
            Err(_) => Err(format!("{what} did not start: first line {line:?}")),
        },
        _ => Err(format!(
            "{what} printed no readiness line within {READY_WITHIN:?}"
        )),
    }
}

/// The delay line's state: the lab addresses behind it pay `rtt_ms` per round trip.
pub struct DelayLine {
    process: LabProcess,
    pub rtt_ms: u32,
}

impl DelayLine {
    /// Switches the added delay off (`false`) or back on.
    pub fn set_enabled(&self, on: bool) -> Result<(), String> {
        self.process
            .signal(if on { libc::SIGUSR2 } else { libc::SIGUSR1 })
    }
}

/// One lab network. See the module documentation for its addresses.
pub struct Lab {
    namespace: String,
    n: u8,
    host_veth: String,
    lab_veth: String,
    // Dropped (killed) before the namespace is deleted.
    processes: Vec<LabProcess>,
    delay: Option<DelayLine>,
}

impl Lab {
    /// Creates lab namespace `ew-<tag>-<pid>-<n>` with its veth pair, addresses and an empty
    /// `inet lab` firewall table. Labs left behind by dead test processes are removed first.
    pub fn new(tag: &str) -> Result<Lab, String> {
        sweep_abandoned();
        let pid = std::process::id();
        let start = (pid % 200) as u8;
        let mut claimed = None;
        // The veth name is the lock: creating it fails if another lab holds `n`.
        for i in 0..200u16 {
            let n = ((start as u16 + i) % 200 + 1) as u8;
            let (host, lab) = (format!("ew{n}h"), format!("ew{n}l"));
            if ip(&["link", "add", &host, "type", "veth", "peer", "name", &lab]).is_ok() {
                claimed = Some((n, host, lab));
                break;
            }
        }
        let Some((n, host_veth, lab_veth)) = claimed else {
            return Err("no free lab number (200 labs alive?)".into());
        };
        let namespace = format!("ew-{tag}-{pid}-{n}");
        let lab = Lab {
            namespace,
            n,
            host_veth,
            lab_veth,
            processes: Vec::new(),
            delay: None,
        };
        lab.configure()?;
        Ok(lab)
    }

    fn configure(&self) -> Result<(), String> {
        let (ns, n) = (self.namespace.as_str(), self.n);
        ip(&["netns", "add", ns])?;
        ip(&["link", "set", &self.lab_veth, "netns", ns])?;
        for prefix in [format!("198.18.{n}.1/25"), format!("10.250.{n}.1/24")] {
            ip(&["addr", "add", &prefix, "dev", &self.host_veth])?;
        }
        ip(&["link", "set", &self.host_veth, "up"])?;
        self.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        for prefix in [format!("198.18.{n}.2/25"), format!("10.250.{n}.2/24")] {
            self.exec_ok(&["ip", "addr", "add", &prefix, "dev", &self.lab_veth])?;
        }
        self.exec_ok(&["ip", "link", "set", &self.lab_veth, "up"])?;
        self.exec_ok(&["nft", "add", "table", "inet", "lab"])?;
        self.exec_ok(&[
            "nft",
            "add chain inet lab input { type filter hook input priority 0 ; policy accept ; }",
        ])?;
        Ok(())
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A "public" address on the direct path, `host` in 2..=127.
    pub fn public_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.n, host.clamp(2, 127))
    }

    /// A "private" (VPC-range) address, `host` in 2..=254.
    pub fn private_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.n, host.clamp(2, 254))
    }

    /// A "public" address behind the delay line, `host` in 130..=254.
    pub fn delayed_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.n, host.clamp(130, 254))
    }

    /// Makes `addr` (one of the lab's) answer inside the lab.
    pub fn add_address(&self, addr: Ipv4Addr) -> Result<(), String> {
        let dev = if self.delayed(addr) {
            format!("ew{}ti", self.n)
        } else {
            self.lab_veth.clone()
        };
        self.exec_ok(&["ip", "addr", "add", &format!("{addr}/32"), "dev", &dev])
            .map(|_| ())
    }

    fn delayed(&self, addr: Ipv4Addr) -> bool {
        let o = addr.octets();
        o[0] == 198 && o[1] == 18 && o[2] == self.n && o[3] >= 128
    }

    /// `ip netns exec <lab> args…`, its stdout or an error.
    pub fn exec_ok(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", self.namespace.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs inside the lab.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace, program]);
        cmd
    }

    /// Starts `cmd` (usually from [`Lab::command`]), waits for its JSON readiness line and
    /// keeps it until the lab is dropped; returns its index for [`Lab::process`].
    pub fn spawn(&mut self, cmd: Command, what: &str) -> Result<usize, String> {
        let p = spawn_ready(cmd, what)?;
        self.processes.push(p);
        Ok(self.processes.len() - 1)
    }

    pub fn process(&self, index: usize) -> Option<&LabProcess> {
        self.processes.get(index)
    }

    /// `tests/netns/upstream.py` on `addr`:`port` inside the lab (TLS when `tls` is given as
    /// (cert, key)); extra args as upstream.py takes them (`--idle-close-ms`, `--rst`).
    pub fn upstream(
        &mut self,
        addr: Ipv4Addr,
        port: u16,
        name: &str,
        tls: Option<(PathBuf, PathBuf)>,
        extra: &[&str],
    ) -> Result<u16, String> {
        let mut cmd = self.command("python3");
        cmd.arg(netns_dir().join("upstream.py"))
            .args(["--host", &addr.to_string(), "--port", &port.to_string()])
            .args(["--name", name])
            .args(extra);
        if let Some((cert, key)) = tls {
            cmd.arg("--tls").arg(cert).arg(key);
        }
        let i = self.spawn(cmd, &format!("upstream {name} on {addr}:{port}"))?;
        self.processes[i]
            .port()
            .ok_or_else(|| format!("upstream {name}: no port"))
    }

    /// `tests/netns/dns_server.py` on `addr`:53 inside the lab, answering `records` (name, address)
    /// with `ttl_s`.
    pub fn dns_server(
        &mut self,
        addr: Ipv4Addr,
        records: &[(&str, Ipv4Addr)],
        ttl_s: u32,
    ) -> Result<(), String> {
        let mut cmd = self.command("python3");
        cmd.arg(netns_dir().join("dns_server.py"))
            .args(["--host", &addr.to_string(), "--port", "53"])
            .args(["--ttl", &ttl_s.to_string()]);
        for (name, ip) in records {
            cmd.arg("--record").arg(format!("{name}={ip}"));
        }
        self.spawn(cmd, &format!("DNS server on {addr}"))
            .map(|_| ())
    }

    /// Adds one nftables rule to the lab's input chain (e.g. `ip daddr 1.2.3.4 tcp dport 443 drop`).
    pub fn firewall(&self, rule: &str) -> Result<(), String> {
        self.exec_ok(&["nft", &format!("add rule inet lab input {rule}")])
            .map(|_| ())
    }

    /// Silently drops TCP to `addr`:`port` (SYNs vanish: the connect times out).
    pub fn drop_tcp(&self, addr: Ipv4Addr, port: u16) -> Result<(), String> {
        self.firewall(&format!("ip daddr {addr} tcp dport {port} drop"))
    }

    /// Rejects TCP to `addr`:`port` with a reset (the connect is refused at once).
    pub fn reject_tcp(&self, addr: Ipv4Addr, port: u16) -> Result<(), String> {
        self.firewall(&format!(
            "ip daddr {addr} tcp dport {port} reject with tcp reset"
        ))
    }

    /// Silently drops DNS (UDP and TCP port 53) to every lab address.
    pub fn drop_dns(&self) -> Result<(), String> {
        self.firewall("udp dport 53 drop")?;
        self.firewall("tcp dport 53 drop")
    }

    /// Removes every firewall rule.
    pub fn clear_firewall(&self) -> Result<(), String> {
        self.exec_ok(&["nft", "flush chain inet lab input"])
            .map(|_| ())
    }

    /// Builds the delay line: `198.18.n.128/25` is then reached through two TUN devices and a
    /// process that holds every packet for `rtt_ms / 2` each way, so connects, TLS handshakes
    /// and DNS queries to those addresses take one `rtt_ms` per round trip.
    pub fn delay_line(&mut self, rtt_ms: u32) -> Result<&DelayLine, String> {
        delay_line_available()?;
        let n = self.n;
        let (outer, inner) = (format!("ew{n}to"), format!("ew{n}ti"));
        let mut cmd = Command::new("python3");
        cmd.arg(netns_dir().join("delayline.py"))
            .args(["--outer", &outer, "--inner", &inner])
            .args(["--rtt-ms", &rtt_ms.to_string()]);
        let process = spawn_ready(cmd, "delay line")?;
        // The root side answers as 198.19.n.1 so the lab's replies go back through the line.
        let root_side = format!("198.19.{n}.1");
        ip(&["link", "set", &inner, "netns", &self.namespace])?;
        ip(&["addr", "add", &format!("{root_side}/32"), "dev", &outer])?;
        ip(&["link", "set", &outer, "up"])?;
        ip(&[
            "route",
            "add",
            &format!("198.18.{n}.128/25"),
            "dev",
            &outer,
            "src",
            &root_side,
        ])?;
        self.exec_ok(&["ip", "link", "set", &inner, "up"])?;
        self.exec_ok(&[
            "ip",
            "route",
            "add",
            &format!("{root_side}/32"),
            "dev",
            &inner,
        ])?;
        self.delay = Some(DelayLine { process, rtt_ms });
        self.delay
            .as_ref()
            .ok_or_else(|| "delay line vanished".to_string())
    }

    pub fn delay(&self) -> Option<&DelayLine> {
        self.delay.as_ref()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.processes.clear();
        // The TUN devices go with the delay line's process.
        self.delay = None;
        // Deleting the namespace destroys the lab end of the veth, and with it the pair.
        let _ = ip(&["netns", "del", &self.namespace]);
        let _ = ip(&["link", "del", &self.host_veth]);
    }
}

fn netns_dir() -> PathBuf {
    workspace_root().join("tests").join("netns")
}

/// Deletes lab namespaces (`ew-<tag>-<pid>-<n>`) whose test process is gone.
fn sweep_abandoned() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let mut parts = name.rsplitn(3, '-');
        let (Some(n), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !name.starts_with("ew-") {
            continue;
        }
        let alive = pid
            .parse::<u32>()
            .map(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
            .unwrap_or(true);
        if !alive {
            // Its processes outlived the test process: end them, or the namespace stays.
            if let Ok(pids) = ip(&["netns", "pids", name]) {
                for p in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", &format!("ew{n}h")]);
        }
    }
}
