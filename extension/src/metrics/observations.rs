//! The recorder's journal of individual network events, kept beside the metric windows for
//! the diagnosis: a flush empties the windows, but symptoms are judged from what happened
//! to each connect, look-up and reused connection, and across invocations.
//!
//! Bounded: the oldest events fall off once [`JOURNAL_CAPACITY`] are held; a reader that
//! fell behind is told how many it missed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const JOURNAL_CAPACITY: usize = 4096;

/// Why a connection was being opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectPurpose {
    /// For a client's request or tunnel.
    Request,
    /// By the warm-up (INIT, or re-warming after a freeze).
    Warm,
}

/// How one TCP connect attempt to one address ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    Connected,
    /// No answer within the connect timeout (a DROP, or no route out).
    Timeout,
    /// RST (a REJECT, or nothing listening).
    Refused,
    /// `EADDRNOTAVAIL`: no local address/port left (port exhaustion).
    AddrNotAvailable,
    /// `ENETUNREACH` / `EHOSTUNREACH`.
    Unreachable,
    Other,
}

/// How an upstream DNS query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsOutcome {
    Answered,
    ServFail,
    Timeout,
    Error,
}

/// One observed event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One TCP connect attempt to one upstream address.
    Connect {
        host: String,
        addr: SocketAddr,
        purpose: ConnectPurpose,
        outcome: ConnectOutcome,
        ms: f64,
    },
    /// A kept-alive or pre-connected upstream connection found closed or reset when it was
    /// about to be reused. `caught` is true when egress-warden found it before a request
    /// used it (the client never saw it); false when a request failed on it.
    StaleConnection {
        host: String,
        addr: SocketAddr,
        idle: Duration,
        reset: bool,
        caught: bool,
    },
    /// One query to an upstream DNS resolver.
    DnsUpstream { outcome: DnsOutcome, ms: f64 },
    /// A request or tunnel the proxy answered, by destination host.
    Request { host: String, cross_region: bool },
    /// The Telemetry API reported an invocation that timed out.
    FunctionTimeout,
}

/// An event with when it happened: `invocation` is how many INVOKEs had arrived (0 = INIT).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub invocation: u64,
    pub at: Instant,
    pub event: Event,
}

#[derive(Default)]
pub(super) struct Journal {
    events: VecDeque<Observation>,
    /// Sequence number of `events[0]`.
    first_seq: u64,
    /// The invocation count the lifecycle announced last: every event is stamped with it.
    current_invocation: u64,
}

impl super::Recorder {
    /// Adds one event to the journal the diagnosis reads, stamped with the current
    /// invocation (0 during INIT).
    pub fn note(&self, event: Event) {
        let mut journal = self.journal();
        let invocation = journal.current_invocation;
        journal.push(Observation {
            invocation,
            at: Instant::now(),
            event,
        });
    }

    /// The lifecycle announces invocation `invocation` (counted from 1): events from now on
    /// belong to it. An older count announced late does not move the stamp back.
    pub fn begin_invocation(&self, invocation: u64) {
        let mut journal = self.journal();
        journal.current_invocation = journal.current_invocation.max(invocation);
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.inner.journal.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a reader gets: the events after its cursor, the cursor to pass next, and how many
/// events it missed because they fell off the journal.
#[derive(Debug, Default)]
pub struct JournalRead {
    pub events: Vec<Observation>,
    pub next: u64,
    pub missed: u64,
}

impl Journal {
    pub(super) fn push(&mut self, observation: Observation) {
        self.current_invocation = self.current_invocation.max(observation.invocation);
        if self.events.len() == JOURNAL_CAPACITY {
            self.events.pop_front();
            self.first_seq += 1;
        }
        self.events.push_back(observation);
    }

    pub(super) fn read_since(&self, cursor: u64) -> JournalRead {
        let end = self.first_seq + self.events.len() as u64;
        let from = cursor.max(self.first_seq).min(end);
        let skip = (from - self.first_seq) as usize;
        JournalRead {
            events: self.events.iter().skip(skip).cloned().collect(),
            next: end,
            missed: from - cursor.min(from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(ms: f64) -> Observation {
        Observation {
            invocation: 0,
            at: Instant::now(),
            event: Event::DnsUpstream {
                outcome: DnsOutcome::Answered,
                ms,
            },
        }
    }

    #[test]
    fn readers_get_each_event_once_and_learn_what_they_missed() {
        let mut journal = Journal::default();
        journal.push(dns(1.0));
        journal.push(dns(2.0));
        let read = journal.read_since(0);
        assert_eq!(read.events.len(), 2);
        assert_eq!(read.missed, 0);
        let again = journal.read_since(read.next);
        assert!(again.events.is_empty());

        for i in 0..JOURNAL_CAPACITY + 10 {
            journal.push(dns(i as f64));
        }
        let late = journal.read_since(read.next);
        assert_eq!(late.events.len(), JOURNAL_CAPACITY);
        assert_eq!(late.missed, 10);
        assert_eq!(late.next, read.next + JOURNAL_CAPACITY as u64 + 10);
    }

    #[test]
    fn events_are_stamped_with_the_announced_invocation() {
        let recorder = crate::metrics::Recorder::new();
        let event = || Event::DnsUpstream {
            outcome: DnsOutcome::Answered,
            ms: 1.0,
        };
        recorder.note(event());
        recorder.begin_invocation(3);
        recorder.note(event());
        recorder.begin_invocation(5);
        recorder.note(event());
        recorder.note(event());
        // An older count announced late does not move it back.
        recorder.begin_invocation(4);
        recorder.note(event());
        let stamps: Vec<u64> = recorder
            .observations_since(0)
            .events
            .iter()
            .map(|o| o.invocation)
            .collect();
        assert_eq!(stamps, [0, 3, 5, 5, 5]);
    }
}
