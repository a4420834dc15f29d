//! The cache's brain, shared by the DNS listener and the proxy: answer from the store when
//! fresh (prefetching names still asked near expiry), otherwise ask the upstreams once per
//! question however many clients are waiting, and fall back to a stale answer when they
//! fail or are slow (RFC 8767).

use super::answer::{Answer, Freshness, Kind, TtlPolicy};
use super::fetch::{failure_for, wait, Pending};
use super::store::Store;
use super::upstream::Upstreams;
use super::wire::{self, Edns, Parsed, Query};
use super::DnsTuning;
use crate::metrics::{Counter, Recorder};
use hickory_proto::op::{Metadata, ResponseCode};
use hickory_proto::rr::RecordType;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Cumulative counts for the status page (the recorder's counters reset at every flush).
#[derive(Default)]
pub(crate) struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub prefetches: AtomicU64,
    pub malformed: AtomicU64,
    pub overload_dropped: AtomicU64,
}

pub(crate) struct Core {
    pub store: Store,
    pub upstreams: Upstreams,
    pub(super) inflight: Mutex<HashMap<Box<[u8]>, Pending>>,
    pub policy: TtlPolicy,
    pub tuning: DnsTuning,
    recorder: Recorder,
    pub stats: Stats,
    /// Bounds the client queries waiting on upstreams (each holds sockets while it waits).
    pub miss_slots: Arc<Semaphore>,
    /// Wall-clock time that passed without the monotonic clock seeing it (a restore from a
    /// snapshot), in ms: added to every "now" the cache ages answers by.
    unseen_ms: AtomicU64,
}

/// How a query reached us: UDP answers must fit the client's buffer, TCP ones 64 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

pub(crate) enum Handled {
    /// `out` holds the answer.
    Reply,
    /// Nothing to send.
    Ignore,
    /// Not answerable from memory: finish with [`Core::answer_miss`].
    Miss(MissedQuery),
}

/// A query that outlives its packet buffer while upstreams are asked.
pub(crate) struct MissedQuery {
    request: Metadata,
    question: Box<[u8]>,
    qtype: RecordType,
    edns: Option<Edns>,
    key: Box<[u8]>,
    limit: usize,
}

impl MissedQuery {
    fn query(&self) -> Query<'_> {
        Query {
            request: self.request,
            qname: &self.question[..self.question.len().saturating_sub(4)],
            question: &self.question,
            qtype: self.qtype,
            edns: self.edns,
        }
    }
}

/// An answer picked for a client, and whether it is served stale.
pub(crate) struct Resolved {
    pub answer: Arc<Answer>,
    pub stale: bool,
}

enum FastHit {
    Fresh { prefetch: bool },
    Stale,
}

impl Core {
    pub(super) fn new(
        upstreams: Upstreams,
        policy: TtlPolicy,
        tuning: DnsTuning,
        recorder: Recorder,
    ) -> Core {
        Core {
            store: Store::new(tuning.capacity),
            upstreams,
            inflight: Mutex::new(HashMap::new()),
            policy,
            miss_slots: Arc::new(Semaphore::new(tuning.max_pending_misses.max(1))),
            tuning,
            recorder,
            stats: Stats::default(),
            unseen_ms: AtomicU64::new(0),
        }
    }

    /// The cache's time at monotonic instant `at`.
    pub(super) fn cache_time(&self, at: Instant) -> Instant {
        match self.unseen_ms.load(Ordering::Relaxed) {
            0 => at,
            ms => at + Duration::from_millis(ms),
        }
    }

    pub(super) fn now(&self) -> Instant {
        self.cache_time(Instant::now())
    }

    /// Ages every stored answer by `gap`, time that passed while the process was a snapshot:
    /// answers then expire by their wall-clock age, and stay servable stale within the stale
    /// window.
    pub(super) fn age_by(&self, gap: Duration) {
        let ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
        self.unseen_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The hot path: parses a packet and, when the answer is in memory, writes it to `out`
    /// without allocating, awaiting or taking a write lock. `key` is the caller's scratch;
    /// `now` is when the packet was received (one clock read serves a whole batch).
    pub(super) fn handle(
        self: &Arc<Self>,
        packet: &[u8],
        transport: Transport,
        now: Instant,
        key: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Handled {
        let query = match wire::parse_query(packet) {
            Parsed::Query(query) => query,
            reject @ Parsed::Reject { .. } => {
                if reject.write_reject_into(out) == Some(ResponseCode::FormErr) {
                    self.count_malformed();
                }
                return Handled::Reply;
            }
            Parsed::Drop => {
                self.count_malformed();
                return Handled::Ignore;
            }
        };
        if matches!(query.qtype, RecordType::AXFR | RecordType::IXFR) {
            // Zone transfers make no sense through a cache.
            let question = Some(query.question);
            wire::write_reject(
                out,
                &query.request,
                ResponseCode::Refused,
                question,
                query.edns,
            );
            return Handled::Reply;
        }
        let limit = match transport {
            Transport::Udp => query.udp_limit(),
            Transport::Tcp => usize::from(u16::MAX),
        };
        query.write_key(key);
        let recheck = self.tuning.failure_recheck;
        let hit = self.store.with(key, |answer| match answer.freshness(now) {
            Freshness::Fresh { prefetch_due } => {
                answer.render(&query, now, false, limit, out);
                Some(FastHit::Fresh {
                    prefetch: prefetch_due && answer.claim_refresh(),
                })
            }
            Freshness::Stale if answer.refresh_failed_within(now, recheck) => {
                answer.render(&query, now, true, limit, out);
                Some(FastHit::Stale)
            }
            _ => None,
        });
        match hit.flatten() {
            Some(FastHit::Fresh { prefetch }) => {
                self.count_hit();
                if prefetch {
                    self.prefetch(key);
                }
                Handled::Reply
            }
            Some(FastHit::Stale) => {
                self.count_miss();
                self.count_stale();
                Handled::Reply
            }
            None => Handled::Miss(MissedQuery {
                request: query.request,
                question: query.question.into(),
                qtype: query.qtype,
                edns: query.edns,
                key: key.as_slice().into(),
                limit,
            }),
        }
    }

    /// Answers a query the hot path could not, into `out`.
    pub(super) async fn answer_miss(self: &Arc<Self>, missed: &MissedQuery, out: &mut Vec<u8>) {
        let resolved = self.resolve(&missed.key).await;
        resolved.answer.render(
            &missed.query(),
            self.now(),
            resolved.stale,
            missed.limit,
            out,
        );
    }

    /// The answer for a question key: fresh from the store, else from the upstreams, else
    /// stale, else a failure.
    pub(super) async fn resolve(self: &Arc<Self>, key: &[u8]) -> Resolved {
        let now = self.now();
        let mut fallback = None;
        if let Some(answer) = self.store.get(key) {
            match answer.freshness(now) {
                Freshness::Fresh { prefetch_due } => {
                    self.count_hit();
                    if prefetch_due && answer.claim_refresh() {
                        self.prefetch(key);
                    }
                    return Resolved {
                        answer,
                        stale: false,
                    };
                }
                Freshness::Stale
                    if answer.refresh_failed_within(now, self.tuning.failure_recheck) =>
                {
                    self.count_miss();
                    self.count_stale();
                    return Resolved {
                        answer,
                        stale: true,
                    };
                }
                Freshness::Stale => fallback = Some(answer),
                Freshness::Expired => {}
            }
        }
        self.count_miss();
        let pending = self.fetch(key);
        let fetched = match fallback {
            // With a stale answer in hand, wait only the client response timer for a fresh one.
            Some(_) => tokio::time::timeout(self.tuning.stale_answer_after, wait(pending))
                .await
                .ok()
                .flatten(),
            // Without one, the fetch itself is bounded by the upstream timeouts.
            None => wait(pending).await,
        };
        match (fetched, fallback) {
            (Some(answer), Some(stale)) if answer.kind == Kind::Failure => {
                self.count_stale();
                Resolved {
                    answer: stale,
                    stale: true,
                }
            }
            (Some(answer), _) => Resolved {
                answer,
                stale: false,
            },
            (None, Some(stale)) => {
                self.count_stale();
                Resolved {
                    answer: stale,
                    stale: true,
                }
            }
            (None, None) => Resolved {
                answer: Arc::new(failure_for(key, ResponseCode::ServFail)),
                stale: false,
            },
        }
    }

    fn prefetch(self: &Arc<Self>, key: &[u8]) {
        self.stats.prefetches.fetch_add(1, Ordering::Relaxed);
        self.recorder.incr(Counter::DnsPrefetches);
        drop(self.fetch(key));
    }

    pub(super) fn in_flight(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub(super) fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub(super) fn note_overload(&self) {
        self.stats.overload_dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn count_hit(&self) {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        self.recorder.incr(Counter::DnsCacheHits);
    }

    fn count_miss(&self) {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        self.recorder.incr(Counter::DnsCacheMisses);
    }

    fn count_stale(&self) {
        self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
        self.recorder.incr(Counter::DnsStaleServed);
    }

    fn count_malformed(&self) {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        self.recorder.incr(Counter::DnsMalformed);
    }
}
