//! Resolve once, check every address, connect to a checked address (the next one on
//! failure), each attempt bounded by `EGRESS_WARDEN_CONNECT_TIMEOUT_MS`. The socket address
//! handed to `connect` is the one the policy saw: nothing resolves the name again.

use crate::dns::DnsCache;
use crate::metrics::{ConnectOutcome, ConnectPurpose, Event, OpenConnection, Recorder};
use crate::proxy::policy::explain::Explained;
use crate::proxy::policy::host::Target;
use crate::proxy::policy::{Policy, Verdict};
use crate::proxy::upstream::tls::TlsProblem;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Addresses tried per connect before giving up (bounds the worst case to this many timeouts).
const MAX_ADDRESSES: usize = 4;

/// What it takes to open an upstream connection.
pub(crate) struct Dialer {
    pub dns: Arc<DnsCache>,
    pub policy: Policy,
    pub connect_timeout: Duration,
    /// Every connect attempt goes to the recorder's journal, for the diagnosis.
    pub recorder: Recorder,
}

/// An open, policy-checked TCP connection.
#[derive(Debug)]
pub(crate) struct Dialed {
    pub stream: TcpStream,
    /// Counts the connection as open (`connections_peak`) until dropped with it.
    pub open: OpenConnection,
    pub addr: SocketAddr,
    pub dns_ms: Option<f64>,
    pub connect_ms: f64,
    /// `observe` mode: the rule this connection would have been denied by.
    pub observed: Option<&'static str>,
}

/// Why no connection could be opened (or, for TLS, used).
#[derive(Debug)]
pub(crate) enum Failure {
    Denied {
        reason: &'static str,
        addr: Option<SocketAddr>,
        explained: Box<Explained>,
    },
    Dns {
        message: String,
        dns_ms: Option<f64>,
        /// The name does not exist or has no addresses (not: the upstreams failed).
        name_error: bool,
    },
    Timeout {
        addr: SocketAddr,
        dns_ms: Option<f64>,
        after: Duration,
    },
    Refused {
        addr: SocketAddr,
        dns_ms: Option<f64>,
    },
    Io {
        addr: SocketAddr,
        kind: io::ErrorKind,
        message: String,
        dns_ms: Option<f64>,
    },
    Tls {
        addr: SocketAddr,
        message: String,
        problem: TlsProblem,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Denied { explained, .. } => {
                write!(f, "denied by policy: {}", explained.rule)
            }
            Failure::Dns { message, .. } => write!(f, "DNS look-up failed: {message}"),
            Failure::Timeout { addr, after, .. } => {
                write!(
                    f,
                    "connect to {addr} timed out after {} ms",
                    after.as_millis()
                )
            }
            Failure::Refused { addr, .. } => write!(f, "connect to {addr} refused"),
            Failure::Io { addr, message, .. } => write!(f, "connect to {addr} failed: {message}"),
            Failure::Tls { addr, message, .. } => write!(f, "TLS with {addr} failed: {message}"),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        match self {
            Failure::Denied { addr, .. } => *addr,
            Failure::Dns { .. } => None,
            Failure::Timeout { addr, .. }
            | Failure::Refused { addr, .. }
            | Failure::Io { addr, .. }
            | Failure::Tls { addr, .. } => Some(*addr),
        }
    }

    pub(crate) fn dns_ms(&self) -> Option<f64> {
        match self {
            Failure::Dns { dns_ms, .. }
            | Failure::Timeout { dns_ms, .. }
            | Failure::Refused { dns_ms, .. }
            | Failure::Io { dns_ms, .. } => *dns_ms,
            Failure::Denied { .. } | Failure::Tls { .. } => None,
        }
    }

    /// A failure before anything was sent upstream: safe to retry whatever the method.
    pub(crate) fn is_connect_phase(&self) -> bool {
        !matches!(self, Failure::Denied { .. } | Failure::Tls { .. })
    }

    /// A failure that comes back the same on every attempt: a verdict on the certificate,
    /// a name that does not exist (negative answers are cached besides). Not retried.
    pub(crate) fn recurs(&self) -> bool {
        match self {
            Failure::Denied { .. } => true,
            Failure::Tls { problem, .. } => problem.is_certificate(),
            Failure::Dns { name_error, .. } => *name_error,
            Failure::Timeout { .. } | Failure::Refused { .. } | Failure::Io { .. } => false,
        }
    }

    /// What to change, naming the variable where one helps.
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            Failure::Denied { explained, .. } => explained.fix.clone(),
            Failure::Dns {
                name_error: true, ..
            } => Some("check the host name (a route's is in EGRESS_WARDEN_ROUTES)".into()),
            Failure::Dns { .. } => Some(
                "the DNS upstreams did not answer: check EGRESS_WARDEN_DNS_UPSTREAMS and the VPC's resolver".into(),
            ),
            Failure::Timeout { .. } => Some(
                "nothing answered: from a VPC the subnets need a route there (NAT gateway or VPC endpoint); EGRESS_WARDEN_CONNECT_TIMEOUT_MS sets the wait".into(),
            ),
            Failure::Refused { .. } => Some("nothing listens there: check the port".into()),
            Failure::Tls { problem, .. } => problem.hint().map(str::to_owned),
            Failure::Io { .. } => None,
        }
    }
}

pub(crate) fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

impl Dialer {
    /// Opens a connection for a client's request.
    pub(crate) async fn dial(&self, target: &Target) -> Result<Dialed, Failure> {
        self.dial_for(target, ConnectPurpose::Request).await
    }

    fn note_connect(
        &self,
        target: &Target,
        addr: SocketAddr,
        purpose: ConnectPurpose,
        outcome: ConnectOutcome,
        started: Instant,
    ) {
        self.recorder.note(Event::Connect {
            host: target.host.clone(),
            addr,
            purpose,
            outcome,
            ms: ms_since(started),
        });
    }

    pub(crate) async fn dial_for(
        &self,
        target: &Target,
        purpose: ConnectPurpose,
    ) -> Result<Dialed, Failure> {
        let mut observed = None;
        match self.policy.check_host(target) {
            Verdict::Allow => {}
            Verdict::Observe(reason) => observed = Some(reason),
            Verdict::Deny(reason) => return Err(self.denied(reason, target, None)),
        }
        let (ips, dns_ms) = match target.ip {
            Some(ip) => (vec![ip], None),
            None => {
                let started = Instant::now();
                let looked_up = self.dns.lookup_ip(&target.host).await;
                let dns_ms = Some(ms_since(started));
                match looked_up {
                    Ok(ips) if !ips.is_empty() => (ips, dns_ms),
                    Ok(_) => {
                        return Err(Failure::Dns {
                            message: format!("{} has no addresses", target.host),
                            dns_ms,
                            name_error: true,
                        })
                    }
                    Err(err) => {
                        return Err(Failure::Dns {
                            message: err.to_string(),
                            dns_ms,
                            name_error: err.is_name_error(),
                        })
                    }
                }
            }
        };

        let mut denial = None;
        let mut last_failure = None;
        let mut tried = 0;
        for ip in ips {
            if tried >= MAX_ADDRESSES {
                break;
            }
            let addr = SocketAddr::new(ip, target.port);
            let verdict = self.policy.check_addr(target, addr);
            let observed_here = match verdict {
                Verdict::Deny(reason) => {
                    if denial.is_none() {
                        denial = Some(self.denied(reason, target, Some(addr)));
                    }
                    continue;
                }
                Verdict::Observe(reason) => Some(reason),
                Verdict::Allow => None,
            };
            tried += 1;
            let started = Instant::now();
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let connect_ms = ms_since(started);
                    self.note_connect(target, addr, purpose, ConnectOutcome::Connected, started);
                    // Small request/response exchanges must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok(Dialed {
                        stream,
                        open: self.recorder.connection_opened(&target.destination()),
                        addr,
                        dns_ms,
                        connect_ms,
                        observed: observed.or(observed_here),
                    });
                }
                Ok(Err(err)) => {
                    self.note_connect(target, addr, purpose, connect_outcome(&err), started);
                    last_failure = Some(if err.kind() == io::ErrorKind::ConnectionRefused {
                        Failure::Refused { addr, dns_ms }
                    } else {
                        Failure::Io {
                            addr,
                            kind: err.kind(),
                            message: err.to_string(),
                            dns_ms,
                        }
                    });
                }
                Err(_) => {
                    self.note_connect(target, addr, purpose, ConnectOutcome::Timeout, started);
                    last_failure = Some(Failure::Timeout {
                        addr,
                        dns_ms,
                        after: self.connect_timeout,
                    });
                }
            }
        }
        Err(last_failure.or(denial).unwrap_or(Failure::Dns {
            message: format!("{} has no addresses", target.host),
            dns_ms,
            name_error: true,
        }))
    }

    /// A denial, with the rule and the fix in words.
    fn denied(&self, reason: &'static str, target: &Target, addr: Option<SocketAddr>) -> Failure {
        Failure::Denied {
            reason,
            addr,
            explained: Box::new(self.policy.explain(reason, target, addr)),
        }
    }
}

fn connect_outcome(err: &io::Error) -> ConnectOutcome {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => ConnectOutcome::Refused,
        io::ErrorKind::AddrNotAvailable => ConnectOutcome::AddrNotAvailable,
        io::ErrorKind::TimedOut => ConnectOutcome::Timeout,
        _ => match err.raw_os_error() {
            Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => ConnectOutcome::Unreachable,
            _ => ConnectOutcome::Other,
        },
    }
}
