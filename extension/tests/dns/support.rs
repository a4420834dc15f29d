//! Shared by the DNS integration tests: a real authoritative DNS server on loopback (on
//! hickory-proto, counting every query it gets), the egress-warden DNS cache and listener
//! started in-process the way the lifecycle starts them, and real clients (`dig`, and
//! dnspython through `tests/dns/query.py`).

use egress_warden::config::Config;
use egress_warden::dns::{self, DnsCache, DnsServerHandle, DnsTuning};
use egress_warden::metrics::Recorder;
use egress_warden::shutdown;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::AbortHandle;

/// The SOA MINIMUM of the test zone (negative answers are cacheable this long, before caps).
pub(crate) const SOA_MINIMUM: u32 = 60;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap_or_else(|e| panic!("bad test name {s}: {e}"))
}

/// The records an [`Authority`] serves, all under `test.`.
#[derive(Clone, Default)]
pub(crate) struct Zone {
    records: HashMap<(String, RecordType), Vec<Record>>,
}

impl Zone {
    /// The zone most tests use: a, aaaa, cname chain, txt, mx, a large TXT set, short TTLs.
    pub(crate) fn standard() -> Zone {
        let mut z = Zone::default();
        z.add("www.test.", 300, RData::A(A::new(192, 0, 2, 1)));
        z.add(
            "www.test.",
            300,
            RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        );
        z.add("alias.test.", 600, RData::CNAME(CNAME(name("www.test."))));
        z.add(
            "txt.test.",
            120,
            RData::TXT(TXT::new(vec!["v=spf1 -all".into(), "hello world".into()])),
        );
        z.add("test.", 3600, RData::MX(MX::new(10, name("mail.test."))));
        z.add("mail.test.", 300, RData::A(A::new(192, 0, 2, 25)));
        z.add("short.test.", 1, RData::A(A::new(192, 0, 2, 9)));
        z.add("five.test.", 5, RData::A(A::new(192, 0, 2, 5)));
        for i in 0..30 {
            z.add(
                "big.test.",
                300,
                RData::TXT(TXT::new(vec![format!("{i:03}-{}", "x".repeat(180))])),
            );
        }
        z
    }

    pub(crate) fn add(&mut self, owner: &str, ttl: u32, data: RData) {
        let record = Record::from_rdata(name(owner), ttl, data);
        self.records
            .entry((owner.to_ascii_lowercase(), record.record_type()))
            .or_default()
            .push(record);
    }

    fn exists(&self, owner: &str) -> bool {
        self.records.keys().any(|(n, _)| n == owner)
    }

    fn soa() -> Record {
        let soa = SOA::new(
            name("ns.test."),
            name("admin.test."),
            1,
            3600,
            600,
            86400,
            SOA_MINIMUM,
        );
        Record::from_rdata(name("test."), 3600, RData::SOA(soa))
    }

    /// The response an authority (with a recursive resolver's CNAME chasing) gives.
    fn answer(&self, query: &Message) -> Message {
        let mut response = Message::response(query.metadata.id, OpCode::Query);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.queries = query.queries.clone();
        if query.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            response.set_edns(edns);
        }
        let Some(q) = query.queries.first() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        };
        let mut owner = q.name().to_ascii().to_ascii_lowercase();
        for _ in 0..8 {
            if let Some(records) = self.records.get(&(owner.clone(), q.query_type())) {
                response.answers.extend(records.iter().cloned());
                return response;
            }
            match self.records.get(&(owner.clone(), RecordType::CNAME)) {
                Some(cname) if q.query_type() != RecordType::CNAME => {
                    response.answers.extend(cname.iter().cloned());
                    match &cname[0].data {
                        RData::CNAME(target) => owner = target.0.to_ascii().to_ascii_lowercase(),
                        _ => break,
                    }
                }
                _ => break,
            }
        }
        if !self.exists(&owner) {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        response.authorities.push(Zone::soa());
        response
    }
}

/// A real authoritative server on 127.0.0.1 (UDP and TCP, same port) that counts queries.
pub(crate) struct Authority {
    pub addr: SocketAddr,
    counts: Arc<Mutex<HashMap<(String, RecordType), u64>>>,
    total: Arc<AtomicU64>,
    /// When set, queries are read and counted but never answered (a black-holed upstream).
    pub silent: Arc<AtomicBool>,
    /// Extra time before each answer, in ms.
    pub delay_ms: Arc<AtomicU64>,
    tasks: Vec<AbortHandle>,
}

impl Authority {
    pub(crate) async fn start(zone: Zone) -> Authority {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp addr");
        let zone = Arc::new(zone);
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let total = Arc::new(AtomicU64::new(0));
        let silent = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let serve = Server {
            zone,
            counts: counts.clone(),
            total: total.clone(),
            silent: silent.clone(),
            delay_ms: delay_ms.clone(),
        };
        let udp = Arc::new(udp);
        let udp_task = {
            let serve = serve.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65535];
                loop {
                    let Ok((len, peer)) = udp.recv_from(&mut buf).await else {
                        continue;
                    };
                    let packet = buf[..len].to_vec();
                    let (serve, udp) = (serve.clone(), udp.clone());
                    tokio::spawn(async move {
                        if let Some(reply) = serve.reply(&packet, true).await {
                            let _ = udp.send_to(&reply, peer).await;
                        }
                    });
                }
            })
        };
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = tcp.accept().await else {
                    continue;
                };
                let serve = serve.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if stream.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if stream.read_exact(&mut packet).await.is_err() {
                            return;
                        }
                        let Some(reply) = serve.reply(&packet, false).await else {
                            continue;
                        };
                        let mut frame = (reply.len() as u16).to_be_bytes().to_vec();
                        frame.extend_from_slice(&reply);
                        if stream.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Authority {
            addr,
            counts,
            total,
            silent,
            delay_ms,
            tasks: vec![udp_task.abort_handle(), tcp_task.abort_handle()],
        }
    }

    /// Queries received for `owner`/`rtype` (any case) so far.
    pub(crate) fn count(&self, owner: &str, rtype: RecordType) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .get(&(owner.to_ascii_lowercase(), rtype))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Stops answering for good: both sockets are closed.
    pub(crate) fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct Server {
    zone: Arc<Zone>,
    counts: Arc<Mutex<HashMap<(String, RecordType), u64>>>,
    total: Arc<AtomicU64>,
    silent: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
}

impl Server {
    async fn reply(&self, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
        let query = Message::from_vec(packet).ok()?;
        if query.metadata.message_type != MessageType::Query {
            return None;
        }
        self.total.fetch_add(1, Ordering::SeqCst);
        if let Some(q) = query.queries.first() {
            let key = (q.name().to_ascii().to_ascii_lowercase(), q.query_type());
            *self
                .counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_default() += 1;
        }
        if self.silent.load(Ordering::SeqCst) {
            return None;
        }
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let response = self.zone.answer(&query);
        let bytes = response.to_vec().ok()?;
        let limit = match &query.edns {
            Some(edns) => usize::from(edns.max_payload().max(512)),
            None => 512,
        };
        if udp && bytes.len() > limit {
            return response.truncate().to_vec().ok();
        }
        Some(bytes)
    }
}

/// A UDP socket and a TCP listener on the same free loopback port.
async fn bind_pair() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if let Ok(tcp) = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            return (udp, tcp);
        }
    }
    panic!("no free loopback port for both UDP and TCP");
}

/// A loopback port free for both UDP and TCP right now (for the listener under test).
pub(crate) fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// A loopback address where nothing answers DNS (a bound UDP socket nobody reads).
pub(crate) fn dead_upstream() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

/// Tuning with short timers, so failure tests take well under a second each.
pub(crate) fn quick_tuning() -> DnsTuning {
    DnsTuning {
        upstream_timeout: Duration::from_millis(300),
        stale_answer_after: Duration::from_millis(200),
        ..DnsTuning::default()
    }
}

/// The DNS cache and listener under test, with their own runtime, plus the upstream.
pub(crate) struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub upstream: Authority,
    pub cache: Arc<DnsCache>,
    pub server: DnsServerHandle,
    pub port: u16,
    pub recorder: Recorder,
    shutdown: shutdown::ShutdownTrigger,
}

pub(crate) struct Setup {
    pub zone: Zone,
    /// Upstreams tried before the test authority (e.g. dead ones).
    pub upstreams_before: Vec<SocketAddr>,
    /// Use only these upstreams (e.g. a dnsmasq), not the test authority.
    pub only_upstreams: Option<Vec<SocketAddr>>,
    /// Extra `EGRESS_WARDEN_*` variables.
    pub vars: Vec<(&'static str, String)>,
    pub tuning: DnsTuning,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            zone: Zone::standard(),
            upstreams_before: Vec::new(),
            only_upstreams: None,
            vars: Vec::new(),
            tuning: quick_tuning(),
        }
    }
}

impl Harness {
    pub(crate) fn start(setup: Setup) -> Harness {
        // WARDEN_TEST_LOG=debug (an env filter) shows the cache's and hickory's logs.
        if let Ok(filter) = std::env::var("WARDEN_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let upstream = rt.block_on(Authority::start(setup.zone));
        let mut upstreams: Vec<String> = setup
            .upstreams_before
            .iter()
            .map(ToString::to_string)
            .collect();
        upstreams.push(upstream.addr.to_string());
        if let Some(only) = &setup.only_upstreams {
            upstreams = only.iter().map(ToString::to_string).collect();
        }
        let port = free_port();
        let mut vars = vec![
            ("EGRESS_WARDEN_DNS_PORT".to_owned(), port.to_string()),
            (
                "EGRESS_WARDEN_DNS_UPSTREAMS".to_owned(),
                upstreams.join(","),
            ),
        ];
        vars.extend(setup.vars.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let (config, problems) = Config::from_vars(&vars);
        assert!(problems.is_empty(), "config problems: {problems:?}");
        let (shutdown, shutdown_rx) = shutdown::channel();
        let recorder = Recorder::new();
        let cache =
            DnsCache::with_tuning(&config.dns, config.dns_port, recorder.clone(), setup.tuning)
                .expect("cache");
        let server = rt
            .block_on(dns::bind(config.dns_port, cache.clone(), shutdown_rx))
            .expect("bind");
        Harness {
            rt,
            upstream,
            cache,
            server,
            port,
            recorder,
            shutdown,
        }
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        self.cache.status()
    }

    pub(crate) fn shut_down(&self) {
        self.shutdown.trigger();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The UDP threads outlive the runtime unless told to stop.
        self.server.stop();
        self.upstream.stop();
    }
}

/// Runs `dig` against the listener; returns stdout. Only ever at 127.0.0.1.
pub(crate) fn dig(port: u16, args: &[&str]) -> String {
    let output = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=3"])
        .args(args)
        .output()
        .expect("dig is installed (apt-get install dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The records of dig's `+noall +answer` output: (name, ttl, type, data).
pub(crate) fn dig_answers(port: u16, args: &[&str]) -> Vec<(String, u32, String, String)> {
    let mut all = vec!["+noall", "+answer"];
    all.extend_from_slice(args);
    dig(port, &all)
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_owned();
            let ttl = f.next()?.parse().ok()?;
            let _class = f.next()?;
            let rtype = f.next()?.to_owned();
            let data = f.collect::<Vec<_>>().join(" ");
            Some((name, ttl, rtype, data))
        })
        .collect()
}

fn python_helper() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/dns/query.py")
}

/// Asks through dnspython (`tests/dns/query.py`); returns its JSON report.
pub(crate) fn dnspython(port: u16, args: &[&str]) -> serde_json::Value {
    let output = Command::new("python3")
        .arg(python_helper())
        .args(["--port", &port.to_string()])
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "query.py {args:?} printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Sends raw bytes over UDP and waits up to `wait` for one reply.
pub(crate) fn udp_exchange(port: u16, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket.set_read_timeout(Some(wait)).expect("timeout");
    socket
        .send_to(packet, (Ipv4Addr::LOCALHOST, port))
        .expect("send");
    let mut buf = vec![0u8; 65535];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            return Some(buf[..len].to_vec());
        }
    }
    None
}

/// A standard query in wire form, built with hickory.
pub(crate) fn query_bytes(id: u16, qname: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(hickory_proto::op::Query::query(name(qname), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("encode")
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub(crate) fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
