//! Finding the egress-warden binary and staging it as `/opt/extensions/egress-warden` would be;
//! the demo function; where the extension tells the exec wrapper its proxy listens.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// The name the extension registers under (its file name in the layer).
pub const EXTENSION_NAME: &str = "egress-warden";

/// Where the binary under test is: `EGRESS_WARDEN_BIN`, else `$CARGO_TARGET_DIR/debug/…` when
/// that is set, else `<workspace>/target/debug/egress-warden`.
pub fn warden_binary_candidate() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_WARDEN_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    target_dir().join("debug").join(EXTENSION_NAME)
}

/// `$CARGO_TARGET_DIR`, else `<workspace>/target`. A relative one is taken from the workspace
/// root, where the project's scripts run cargo (tests run in the package's directory).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        Some(t) => workspace_root().join(t),
        None => workspace_root().join("target"),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The binary, or a message saying how to get it.
pub fn find_warden_binary() -> Result<PathBuf, String> {
    let p = warden_binary_candidate();
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "egress-warden binary not found at {}: build it first: cargo build -p egress-warden \
             (or point EGRESS_WARDEN_BIN at it)",
            p.display()
        ))
    }
}

/// [`find_warden_binary`], panicking with its message (for tests).
pub fn warden_binary() -> PathBuf {
    match find_warden_binary() {
        Ok(p) => p,
        Err(m) => panic!("{m}"),
    }
}

/// The demo function (`sam/demo-function`, built as `bootstrap` in the same target directory),
/// panicking with a build hint if absent.
pub fn demo_function_binary() -> PathBuf {
    let p = target_dir().join("debug").join("bootstrap");
    assert!(
        p.is_file(),
        "demo function not found at {}: build it first: cargo build -p demo-function",
        p.display()
    );
    p
}

/// The exec wrapper of the layer (`layer/egress-warden-wrapper`).
pub fn wrapper_script() -> PathBuf {
    workspace_root().join("layer").join("egress-warden-wrapper")
}

/// Where the extension writes `<port> <pid>` once its proxy listens on `port`, and the exec
/// wrapper looks before exporting the proxy variables.
pub fn ready_file(port: u16) -> PathBuf {
    PathBuf::from(format!("/tmp/.egress-warden/proxy-{port}"))
}

/// A temporary `extensions/` directory; removed on drop.
pub struct ExtensionsDir {
    tmp: TempDir,
}

impl ExtensionsDir {
    pub fn new() -> std::io::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("warden-ext-").tempdir()?;
        std::fs::create_dir(tmp.path().join("extensions"))?;
        Ok(ExtensionsDir { tmp })
    }

    pub fn path(&self) -> PathBuf {
        self.tmp.path().join("extensions")
    }

    /// A scratch directory beside `extensions/` (task root, wrapper scripts…).
    pub fn scratch(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }

    /// Places `binary` in the directory as `name` (a symlink, or a copy where links fail).
    pub fn add(&self, name: &str, binary: &Path) -> std::io::Result<PathBuf> {
        let dest = self.path().join(name);
        let target = std::fs::canonicalize(binary)?;
        if std::os::unix::fs::symlink(&target, &dest).is_err() {
            std::fs::copy(&target, &dest)?;
        }
        Ok(dest)
    }

    /// An `extensions/` directory holding egress-warden (panics with a build hint if absent).
    pub fn with_warden() -> Self {
        let d = Self::new().expect("temp dir");
        d.add(EXTENSION_NAME, &warden_binary())
            .expect("stage egress-warden");
        d
    }

    /// The emulator with this directory and egress-warden's proxy on `proxy`, its DNS listener
    /// on a free port with a dead upstream, and loopback allowed (test origins live there).
    pub fn proxy_config(&self, proxy: u16) -> crate::emulator::EmulatorConfig {
        crate::emulator::EmulatorConfig::with_extensions_dir(self.path())
            .env("EGRESS_WARDEN_PROXY_PORT", proxy.to_string())
            .env("EGRESS_WARDEN_DNS_PORT", free_port().to_string())
            .env("EGRESS_WARDEN_DNS_UPSTREAMS", "127.0.0.1:1")
            .env("EGRESS_WARDEN_ALLOW", "127.0.0.0/8")
    }

    /// [`Self::proxy_config`], resolving names through a test's DNS server on 127.0.0.1:`dns_port`.
    pub fn proxy_config_resolving(
        &self,
        proxy: u16,
        dns_port: u16,
    ) -> crate::emulator::EmulatorConfig {
        self.proxy_config(proxy).env(
            "EGRESS_WARDEN_DNS_UPSTREAMS",
            format!("127.0.0.1:{dns_port}"),
        )
    }
}

/// The emulator started and through INIT; panics with egress-warden's log if either fails.
pub async fn started_through_init(
    cfg: crate::emulator::EmulatorConfig,
) -> crate::emulator::Emulator {
    let mut emu = crate::emulator::Emulator::start(cfg)
        .await
        .expect("emulator");
    if let Err(e) = emu.wait_init().await {
        panic!("{e}\n{}", emu.stderr_lines(EXTENSION_NAME).join("\n"));
    }
    emu
}

/// Sends SHUTDOWN (spindown) and checks egress-warden ended as it should: by itself, with
/// code 0, before the deadline; panics with its log otherwise.
pub async fn shut_down_cleanly(
    emu: &mut crate::emulator::Emulator,
) -> crate::emulator::ShutdownReport {
    let report = emu
        .shutdown(crate::emulator::ShutdownReason::Spindown)
        .await;
    let log = || emu.stderr_lines(EXTENSION_NAME).join("\n");
    let Some(exit) = report.extension(EXTENSION_NAME) else {
        panic!("no exit report for {EXTENSION_NAME}\n{}", log());
    };
    assert!(
        exit.before_deadline && !exit.killed && exit.exit.and_then(|x| x.code) == Some(0),
        "{exit:?}\n{}",
        log()
    );
    report
}

/// A port that was free a moment ago on 127.0.0.1 (TCP and UDP).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let Ok(tcp) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else {
            continue;
        };
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr.port();
        }
    }
    0
}

/// Sum of one metric over egress-warden's function-level EMF documents written so far.
pub fn emf_function_total(emu: &crate::emulator::Emulator, metric: &str) -> f64 {
    crate::emf::function_total(&emu.stdout_lines(EXTENSION_NAME), metric)
}

/// Every stdout line of egress-warden, each validated as an EMF document; panics listing the
/// lines that are not (stdout carries only EMF, one document per line).
pub fn emf_documents(emu: &crate::emulator::Emulator) -> Vec<crate::emf::EmfDocument> {
    let v = crate::emf::EmfValidator::new();
    let mut docs = Vec::new();
    let mut bad = Vec::new();
    for line in emu.stdout_lines(EXTENSION_NAME) {
        if line.trim().is_empty() {
            continue;
        }
        match v.validate_line(&line) {
            Ok(d) => docs.push(d),
            Err(e) => bad.push(format!("{line}\n    -> {}", e.join("\n    -> "))),
        }
    }
    assert!(
        bad.is_empty(),
        "stdout must hold only valid EMF documents, one per line:\n{}",
        bad.join("\n")
    );
    docs
}

/// The finding lines (JSON with a `finding` key) egress-warden wrote to stderr so far.
pub fn findings(emu: &crate::emulator::Emulator) -> Vec<serde_json::Value> {
    emu.stderr_lines(EXTENSION_NAME)
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("finding").is_some())
        .collect()
}

/// egress-warden's stderr so far, for failure messages.
pub fn extension_log(emu: &crate::emulator::Emulator) -> String {
    emu.stderr_lines(EXTENSION_NAME).join("\n")
}
