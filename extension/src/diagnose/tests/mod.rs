//! Each rule fed with journal events as the proxy, the DNS upstreams and the pools note them;
//! then the whole path through the real proxy on loopback.

mod proxy_tests;
mod rules_tests;

use super::{Diagnosis, Entry, Facts, Settings, Window};
use crate::clock::InvocationClock;
use crate::findings::Findings;
use crate::metrics::{ConnectOutcome, ConnectPurpose, DnsOutcome, Event, Recorder};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Fixture {
    pub recorder: Recorder,
    pub clock: Arc<InvocationClock>,
    pub board: Arc<Findings>,
    pub diagnosis: Arc<Diagnosis>,
    /// symptom counts taken out of the recorder so far, by finding
    symptoms: std::collections::BTreeMap<String, u64>,
}

impl Fixture {
    pub(super) fn new() -> Fixture {
        let recorder = Recorder::new();
        let clock = Arc::new(InvocationClock::new());
        let board = Arc::new(Findings::default());
        let settings = Settings {
            vpc_cidrs: [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
            ]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect(),
            home_region: Some("us-east-1".to_owned()),
            pool_idle: Duration::from_secs(60),
        };
        let diagnosis = Arc::new(Diagnosis::new(
            recorder.clone(),
            clock.clone(),
            board.clone(),
            settings,
        ));
        Fixture {
            recorder,
            clock,
            board,
            diagnosis,
            symptoms: Default::default(),
        }
    }

    /// Moves on to invocation `n` (0 = INIT), as the lifecycle's INVOKEs would.
    pub(super) fn invoke_until(&self, n: u64) {
        while self.clock.invocations() < n {
            self.clock.begin_invocation(0);
        }
        self.recorder.begin_invocation(self.clock.invocations());
    }

    pub(super) fn note(&self, event: Event) {
        self.recorder.note(event);
    }

    pub(super) fn note_n(&self, n: usize, event: Event) {
        for _ in 0..n {
            self.note(event.clone());
        }
    }

    /// Evaluates and returns the active findings' names.
    pub(super) fn evaluate(&mut self) -> Vec<&'static str> {
        self.diagnosis.run();
        for (name, n) in self.recorder.take().named_counts {
            *self.symptoms.entry(name).or_default() += n;
        }
        self.board.list().iter().map(|f| f.finding).collect()
    }

    /// How many times `symptom_<finding>` was counted.
    pub(super) fn symptom_count(&self, finding: &str) -> u64 {
        self.symptoms
            .get(&format!("symptom_{finding}"))
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn evidence(&self, finding: &str) -> serde_json::Value {
        self.board
            .list()
            .into_iter()
            .find(|f| f.finding == finding)
            .map(|f| f.evidence)
            .unwrap_or_default()
    }
}

pub(super) fn connect(host: &str, addr: &str, outcome: ConnectOutcome, ms: f64) -> Event {
    Event::Connect {
        host: host.to_owned(),
        addr: addr.parse::<SocketAddr>().unwrap(),
        purpose: ConnectPurpose::Request,
        outcome,
        ms,
    }
}

pub(super) fn dns(outcome: DnsOutcome, ms: f64) -> Event {
    Event::DnsUpstream { outcome, ms }
}

pub(super) fn request(host: &str, cross_region: bool) -> Event {
    Event::Request {
        host: host.to_owned(),
        cross_region,
    }
}

pub(super) fn stale(idle_s: u64, reset: bool, caught: bool) -> Event {
    Event::StaleConnection {
        host: "api.example.com".to_owned(),
        addr: "203.0.113.20:443".parse().unwrap(),
        idle: Duration::from_secs(idle_s),
        reset,
        caught,
    }
}

#[test]
fn windows_keep_the_most_recent_events_in_order() {
    let mut window = Window::new(4);
    for seq in 0..11 {
        window.push(Entry {
            seq,
            observation: crate::metrics::Observation {
                invocation: 0,
                at: std::time::Instant::now(),
                event: dns(DnsOutcome::Answered, seq as f64),
            },
            facts: Facts::default(),
        });
        let held: Vec<u64> = window.from(0).0.iter().map(|e| e.seq).collect();
        let expected: Vec<u64> = (seq.saturating_sub(3)..=seq).collect();
        assert_eq!(held, expected);
    }
    let from_9: Vec<u64> = window.from(9).0.iter().map(|e| e.seq).collect();
    assert_eq!(from_9, [9, 10]);
    assert!(window.entries.len() < 2 * 4, "compacted");
    assert!(!window.age_out(), "nothing is old yet");
}
