//! Names the network problems behind "the call timed out": reads the recorder's journal of
//! connects, DNS queries, stale connections and requests, and judges each finding's rule
//! (`rules`) over a sliding window of recent events.
//!
//! A finding is posted on the board ([`Findings`]) (which logs it and which the status page
//! lists) when its rule fires, and counted as `symptom_<finding>` for the next flush. It is
//! taken down when the events since it appeared show the problem gone; after that only
//! events newer than the clearing count towards raising it again, so one burst of bad
//! evidence is reported once.
//!
//! Runs on the INVOKE path, at SHUTDOWN and for the status page: the window is kept per kind
//! of event, so each rule reads only the events it judges, and nothing runs when nothing new
//! was noted.

mod rules;
#[cfg(test)]
mod tests;

use crate::aws::aws_endpoint_of;
use crate::clock::InvocationClock;
use crate::config::Config;
use crate::findings::{ActiveFinding, Findings};
use crate::metrics::{ConnectOutcome, Event, Observation, Recorder};
use ipnet::IpNet;
use rules::{Inputs, RULES};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The window: at most this many recent connect attempts, …
pub const WINDOW_CONNECTS: usize = 512;
/// … upstream DNS queries, …
pub const WINDOW_DNS_QUERIES: usize = 256;
/// … stale connections, …
pub const WINDOW_STALE: usize = 128;
/// … requests, …
pub const WINDOW_REQUESTS: usize = 512;
/// … and function timeouts, …
pub const WINDOW_FUNCTION_TIMEOUTS: usize = 64;
/// … none older than this.
pub const WINDOW_AGE: Duration = Duration::from_secs(600);
/// Connect times kept from the cold phase (INIT and the first invoke), the baseline
/// `eni_cold_path` compares the steady state with.
const COLD_SAMPLES: usize = 64;

/// What the rules need to know about the function's setting.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `EGRESS_WARDEN_VPC_CIDRS`: everything else is public egress.
    pub vpc_cidrs: Vec<IpNet>,
    /// `AWS_REGION`.
    pub home_region: Option<String>,
    /// `EGRESS_WARDEN_POOL_IDLE_S`, quoted in `idle_reset`'s evidence.
    pub pool_idle: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            vpc_cidrs: config.vpc_cidrs.clone(),
            home_region: config.lambda.region.clone(),
            pool_idle: config.pool_idle,
        }
    }
}

/// One journal event with its sequence number (the order the recorder saw it) and what is
/// worked out about it once, when it enters the window, rather than at every evaluation.
pub(crate) struct Entry {
    seq: u64,
    observation: Observation,
    facts: Facts,
}

#[derive(Default)]
pub(crate) struct Facts {
    /// A connect to an address outside the VPC ranges.
    public: bool,
    /// A connect to an AWS endpoint: its service and region.
    aws: Option<AwsService>,
}

pub(crate) struct AwsService {
    service: String,
    region: Option<String>,
}

impl Facts {
    fn of(event: &Event, settings: &Settings) -> Facts {
        let Event::Connect { host, addr, .. } = event else {
            return Facts::default();
        };
        let ip = addr.ip();
        Facts {
            public: !settings.vpc_cidrs.iter().any(|net| net.contains(&ip)),
            aws: aws_endpoint_of(host).map(|e| AwsService {
                service: e.service.to_owned(),
                region: e.region.map(str::to_owned),
            }),
        }
    }
}

/// Where one finding stands, in journal sequence numbers.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    /// Only events from this one on count towards raising it (older ones were before it
    /// last cleared).
    counts_from: u64,
    /// While it holds: the first event after it was raised, from which on healthy evidence
    /// can clear it.
    active_from: Option<u64>,
}

/// One kind of event, most recent last, bounded in count and age. A vector whose front is
/// dropped in batches: reading is one slice, and each entry is moved at most once.
struct Window {
    entries: Vec<Entry>,
    /// Entries before this index have left the window.
    start: usize,
    capacity: usize,
}

impl Window {
    fn new(capacity: usize) -> Window {
        Window {
            entries: Vec::with_capacity(2 * capacity),
            start: 0,
            capacity,
        }
    }

    fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
        if self.entries.len() - self.start > self.capacity {
            self.start += 1;
        }
        self.compact();
    }

    /// Drops what is older than [`WINDOW_AGE`]; true if anything was.
    fn age_out(&mut self) -> bool {
        let before = self.start;
        while self
            .entries
            .get(self.start)
            .is_some_and(|e| e.observation.at.elapsed() > WINDOW_AGE)
        {
            self.start += 1;
        }
        self.compact();
        self.start != before
    }

    fn compact(&mut self) {
        if self.start >= self.capacity {
            self.entries.drain(..self.start);
            self.start = 0;
        }
    }

    /// The entries from sequence number `seq` on.
    fn from(&self, seq: u64) -> Events<'_> {
        let entries = &self.entries[self.start..];
        let start = entries.partition_point(|e| e.seq < seq);
        Events(&entries[start..])
    }
}

struct State {
    cursor: u64,
    connects: Window,
    dns: Window,
    stale: Window,
    requests: Window,
    timeouts: Window,
    cold_connect_ms: Vec<f64>,
    tracks: [Track; RULES.len()],
}

pub struct Diagnosis {
    recorder: Recorder,
    clock: Arc<InvocationClock>,
    board: Arc<Findings>,
    settings: Settings,
    state: Mutex<State>,
}

impl Diagnosis {
    pub fn new(
        recorder: Recorder,
        clock: Arc<InvocationClock>,
        board: Arc<Findings>,
        settings: Settings,
    ) -> Diagnosis {
        Diagnosis {
            recorder,
            clock,
            board,
            settings,
            state: Mutex::new(State {
                cursor: 0,
                connects: Window::new(WINDOW_CONNECTS),
                dns: Window::new(WINDOW_DNS_QUERIES),
                stale: Window::new(WINDOW_STALE),
                requests: Window::new(WINDOW_REQUESTS),
                timeouts: Window::new(WINDOW_FUNCTION_TIMEOUTS),
                cold_connect_ms: Vec::new(),
                tracks: [Track::default(); RULES.len()],
            }),
        }
    }

    /// A diagnosis that also answers the board's refresh requests (the status page's) from a
    /// task of its own. The lifecycle calls [`Diagnosis::run`] itself before each flush.
    pub fn start(
        recorder: Recorder,
        clock: Arc<InvocationClock>,
        board: Arc<Findings>,
        settings: Settings,
    ) -> Arc<Diagnosis> {
        let requests = board.take_refresh_requests();
        let diagnosis = Arc::new(Diagnosis::new(recorder, clock, board, settings));
        if let Some(mut requests) = requests {
            let diagnosis = diagnosis.clone();
            tokio::spawn(async move {
                while let Some(first) = requests.recv().await {
                    // Every request already queued is answered by one run.
                    let mut waiting = vec![first];
                    while let Ok(more) = requests.try_recv() {
                        waiting.push(more);
                    }
                    diagnosis.run();
                    for done in waiting {
                        let _ = done.send(());
                    }
                }
            });
        }
        diagnosis
    }

    /// Reads the new events and raises or clears findings.
    pub fn run(&self) {
        let invocation = self.clock.invocations();
        // Held across the read so two evaluations cannot both take the same events.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let read = self.recorder.observations_since(state.cursor);
        if read.missed > 0 {
            tracing::debug!(
                missed = read.missed,
                "the diagnosis fell behind the journal"
            );
        }
        let news = !read.events.is_empty();
        let first_seq = read.next - read.events.len() as u64;
        for (i, observation) in read.events.into_iter().enumerate() {
            state.admit(first_seq + i as u64, observation, &self.settings);
        }
        state.cursor = read.next;
        if !state.age_out() && !news {
            return;
        }
        let next = read.next;

        let state = &mut *state;
        let inputs = Inputs {
            settings: &self.settings,
            cold_connect_ms: &state.cold_connect_ms,
            open_connections: self.recorder.upstream_connections_open(),
        };
        for (rule, track) in RULES.iter().zip(state.tracks.iter_mut()) {
            let recent = |seq| Recent {
                connects: state.connects.from(seq),
                dns: state.dns.from(seq),
                stale: state.stale.from(seq),
                requests: state.requests.from(seq),
                timeouts: state.timeouts.from(seq),
            };
            match track.active_from {
                None => {
                    let Some(report) = (rule.fires)(&inputs, recent(track.counts_from)) else {
                        continue;
                    };
                    let raised = self.board.raise(ActiveFinding {
                        finding: rule.name,
                        summary: report.summary,
                        since_invocation: invocation,
                        evidence: report.evidence,
                        fix: report.fix,
                    });
                    if raised {
                        self.recorder
                            .count_named(&format!("symptom_{}", rule.name), 1);
                    }
                    track.active_from = Some(next);
                }
                Some(active_from) => {
                    let Some(report) = (rule.clears)(&inputs, recent(active_from)) else {
                        continue;
                    };
                    self.board
                        .clear(rule.name, &report.summary, report.evidence);
                    *track = Track {
                        counts_from: next,
                        active_from: None,
                    };
                }
            }
        }
    }
}

impl State {
    fn admit(&mut self, seq: u64, observation: Observation, settings: &Settings) {
        if let Event::Connect {
            outcome: ConnectOutcome::Connected,
            ms,
            ..
        } = observation.event
        {
            if rules::is_cold(observation.invocation) && self.cold_connect_ms.len() < COLD_SAMPLES {
                self.cold_connect_ms.push(ms);
            }
        }
        let window = match observation.event {
            Event::Connect { .. } => &mut self.connects,
            Event::DnsUpstream { .. } => &mut self.dns,
            Event::StaleConnection { .. } => &mut self.stale,
            Event::Request { .. } => &mut self.requests,
            Event::FunctionTimeout => &mut self.timeouts,
        };
        let facts = Facts::of(&observation.event, settings);
        window.push(Entry {
            seq,
            observation,
            facts,
        });
    }

    fn age_out(&mut self) -> bool {
        // Not short-circuited: every window ages.
        self.connects.age_out()
            | self.dns.age_out()
            | self.stale.age_out()
            | self.requests.age_out()
            | self.timeouts.age_out()
    }
}

/// What a rule reads: per kind, the window's events from some sequence number on.
#[derive(Clone, Copy)]
pub(crate) struct Recent<'a> {
    pub connects: Events<'a>,
    pub dns: Events<'a>,
    pub stale: Events<'a>,
    pub requests: Events<'a>,
    /// Invocations the Telemetry API reported timed out: evidence next to unanswered connects.
    pub timeouts: Events<'a>,
}

/// A run of window events, as the rules read them.
#[derive(Clone, Copy)]
pub(crate) struct Events<'a>(&'a [Entry]);

impl<'a> Events<'a> {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a Observation> + 'a {
        self.0.iter().map(|e| &e.observation)
    }

    fn entries(&self) -> impl Iterator<Item = &'a Entry> + 'a {
        self.0.iter()
    }
}
