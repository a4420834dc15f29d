//! Names the network problems behind "the call timed out": reads the recorder's journal of
//! connects, DNS queries, stale connections and requests, and judges each finding's rule
//! ([`rules`]) over a sliding window of recent events.
//!
//! A finding is posted on the board in [`Context`] (which logs it and which the status page
//! lists) when its rule fires, and counted as `symptom_<finding>` for the next flush. It is
//! taken down when the events since it appeared show the problem gone; after that only
//! events newer than the clearing count towards raising it again, so one burst of bad
//! evidence is reported once.
//!
//! Runs on the INVOKE path, at SHUTDOWN and for the status page: one pass per rule over at
//! most [`WINDOW_EVENTS`] events.

mod rules;
#[cfg(test)]
mod tests;

use crate::context::{ActiveFinding, Context, Evaluate, Findings, InvocationClock};
use crate::metrics::{ConnectOutcome, Event, Observation, Recorder};
use ipnet::IpNet;
use rules::{Inputs, RULES};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The window: at most this many recent events…
pub const WINDOW_EVENTS: usize = 1024;
/// …none older than this.
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

/// One journal event with its sequence number (the order the recorder saw it).
pub(crate) struct Entry {
    seq: u64,
    observation: Observation,
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

struct State {
    cursor: u64,
    window: VecDeque<Entry>,
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
                window: VecDeque::with_capacity(WINDOW_EVENTS),
                cold_connect_ms: Vec::new(),
                tracks: [Track::default(); RULES.len()],
            }),
        }
    }

    /// The diagnosis of `ctx`, registered with its findings board so that
    /// [`Findings::refresh`] (called by the lifecycle and the status page) runs it. The
    /// board holds it weakly: keep the returned handle for as long as it should run.
    pub fn start(ctx: &Context) -> Arc<Diagnosis> {
        let settings = Settings {
            vpc_cidrs: ctx.config.vpc_cidrs.clone(),
            home_region: ctx.config.lambda.region.clone(),
            pool_idle: ctx.config.pool_idle,
        };
        let diagnosis = Arc::new(Diagnosis::new(
            ctx.recorder.clone(),
            ctx.clock.clone(),
            ctx.findings.clone(),
            settings,
        ));
        let weak: Weak<Diagnosis> = Arc::downgrade(&diagnosis);
        ctx.findings.set_evaluator(weak);
        diagnosis
    }

    /// Reads the new events and raises or clears findings.
    pub fn run(&self) {
        let invocation = self.clock.invocations();
        self.recorder.mark_invocation(invocation);
        // Held across the read so two evaluations cannot both take the same events.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let read = self.recorder.observations_since(state.cursor);
        if read.missed > 0 {
            tracing::debug!(
                missed = read.missed,
                "the diagnosis fell behind the journal"
            );
        }
        let first_seq = read.next - read.events.len() as u64;
        for (i, observation) in read.events.into_iter().enumerate() {
            state.admit(first_seq + i as u64, observation);
        }
        state.cursor = read.next;
        state.age_out();
        let next = read.next;

        let State {
            window,
            cold_connect_ms,
            tracks,
            ..
        } = &mut *state;
        let window = window.make_contiguous();
        let inputs = Inputs {
            settings: &self.settings,
            cold_connect_ms,
        };
        for (rule, track) in RULES.iter().zip(tracks.iter_mut()) {
            match track.active_from {
                None => {
                    let Some(report) = (rule.fires)(&inputs, from(window, track.counts_from))
                    else {
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
                    let Some(report) = (rule.clears)(&inputs, from(window, active_from)) else {
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

impl Evaluate for Diagnosis {
    fn evaluate(&self) {
        self.run();
    }
}

impl State {
    fn admit(&mut self, seq: u64, observation: Observation) {
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
        if self.window.len() == WINDOW_EVENTS {
            self.window.pop_front();
        }
        self.window.push_back(Entry { seq, observation });
    }

    fn age_out(&mut self) {
        while self
            .window
            .front()
            .is_some_and(|e| e.observation.at.elapsed() > WINDOW_AGE)
        {
            self.window.pop_front();
        }
    }
}

/// The events of `window` (in sequence order) from sequence number `seq` on.
fn from(window: &[Entry], seq: u64) -> Events<'_> {
    let start = window.partition_point(|e| e.seq < seq);
    Events(&window[start..])
}

/// A run of window events, as the rules read them.
#[derive(Clone, Copy)]
pub(crate) struct Events<'a>(&'a [Entry]);

impl<'a> Events<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &'a Observation> + 'a {
        self.0.iter().map(|e| &e.observation)
    }
}
