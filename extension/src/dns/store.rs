//! The bounded answer store: sharded hash tables from question to prepared answer, each shard
//! evicting with CLOCK (second chance): a hit only sets a bit, so the hot path takes a read
//! lock and writes nothing shared, while eviction still keeps what is being asked for.
//! Answers past their stale window go first. A table holds only pointers to answers and
//! compares keys against the question inside each answer, with the hash computed once per
//! lookup: a hit touches the table's slot, the answer, and its bytes.

use super::answer::{Answer, Freshness};
use hashbrown::HashTable;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

const SHARDS: usize = 16;

/// foldhash (hashbrown's own default hasher), seeded per process: keys are short DNS
/// questions, and SipHash was a visible share of a cache hit's user time. The listener only
/// serves loopback clients, so flooding resistance matters less than speed here.
type KeyHashState = foldhash::fast::RandomState;

#[derive(Default)]
struct Shard {
    map: HashTable<Arc<Answer>>,
    /// Every answer inserted, oldest first; entries replaced since are skipped lazily.
    clock: VecDeque<Arc<Answer>>,
}

pub(super) struct Store {
    shards: Box<[RwLock<Shard>]>,
    /// Hashes keys: the high bits pick the shard, the table uses the rest.
    hasher: KeyHashState,
    per_shard: usize,
    evictions: AtomicU64,
}

impl Store {
    pub(super) fn new(capacity: usize) -> Store {
        Store {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: KeyHashState::default(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            evictions: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the answer for `key` under the shard's read lock (no refcount traffic on
    /// the hot path); `f` should only copy bytes out.
    pub(super) fn with<R>(&self, key: &[u8], f: impl FnOnce(&Answer) -> R) -> Option<R> {
        let hash = self.hash(key);
        let shard = lock_read(self.shard(hash));
        let answer = shard.map.find(hash, |a| a.key() == key)?;
        answer.touch();
        Some(f(answer))
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<Arc<Answer>> {
        let hash = self.hash(key);
        let answer = lock_read(self.shard(hash))
            .map
            .find(hash, |a| a.key() == key)
            .cloned()?;
        answer.touch();
        Some(answer)
    }

    /// Stores a cacheable answer under its own key, evicting if the shard is full.
    pub(super) fn insert(&self, answer: Arc<Answer>, now: Instant) {
        let hash = self.hash(answer.key());
        let mut shard = lock_write(self.shard(hash));
        let same_key = |a: &Arc<Answer>| a.key() == answer.key();
        // Only a full shard asks whether the key is new (replacing an answer needs no room).
        if shard.map.len() >= self.per_shard && shard.map.find(hash, same_key).is_none() {
            self.evict_one(&mut shard, now);
        }
        let rehash = |a: &Arc<Answer>| self.hash(a.key());
        match shard.map.entry(hash, same_key, rehash) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => *slot.get_mut() = answer.clone(),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(answer.clone());
            }
        }
        shard.clock.push_back(answer);
        // Replaced answers linger in the clock until passed; keep that bounded.
        if shard.clock.len() > 2 * self.per_shard + 16 {
            let Shard { map, clock } = &mut *shard;
            clock.retain(|a| self.is_live(map, a));
        }
    }

    /// Whether `candidate` is still the stored answer for its key (not replaced or evicted).
    fn is_live(&self, map: &HashTable<Arc<Answer>>, candidate: &Arc<Answer>) -> bool {
        let key = candidate.key();
        map.find(self.hash(key), |a| a.key() == key)
            .is_some_and(|live| Arc::ptr_eq(live, candidate))
    }

    fn evict_one(&self, shard: &mut Shard, now: Instant) {
        // Each answer is passed at most twice (once to clear its bit), so this ends.
        for _ in 0..(2 * shard.clock.len() + 1) {
            let Some(candidate) = shard.clock.pop_front() else {
                return;
            };
            if !self.is_live(&shard.map, &candidate) {
                continue;
            }
            let dead = candidate.freshness(now) == Freshness::Expired;
            if !dead && candidate.take_reference() {
                shard.clock.push_back(candidate);
                continue;
            }
            let key = candidate.key();
            if let Ok(slot) = shard
                .map
                .find_entry(self.hash(key), |a| Arc::ptr_eq(a, &candidate))
            {
                slot.remove();
            }
            self.evictions.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }

    /// Questions stored now (takes every shard's lock in turn: for the status page).
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock_read(s).map.len()).sum()
    }

    pub(super) fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    pub(super) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // Bits 52-55: the table takes its buckets from the low bits, its tags from the top seven.
        &self.shards[(hash >> 52) as usize % SHARDS]
    }
}

fn lock_read(shard: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    shard.read().unwrap_or_else(|p| p.into_inner())
}

/// A panic while holding the lock leaves plain tables that are still consistent enough to
/// serve from; refusing all DNS afterwards would be worse.
fn lock_write(shard: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    shard.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::answer::TtlPolicy;
    use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use std::time::Duration;

    fn answer(host: &str) -> Arc<Answer> {
        let name = Name::from_ascii(host).expect("name");
        let q = Query::query(name.clone(), RecordType::A);
        let mut m = Message::response(1, OpCode::Query);
        m.metadata.response_code = ResponseCode::NoError;
        m.add_query(q.clone());
        m.answers
            .push(Record::from_rdata(name, 60, RData::A(A::new(1, 1, 1, 1))));
        let policy = TtlPolicy::new(
            Duration::ZERO,
            Duration::from_secs(300),
            Duration::from_secs(5),
            Duration::ZERO,
        );
        Arc::new(Answer::from_upstream(&q, &m, &policy, Instant::now()))
    }

    #[test]
    fn stays_bounded_and_keeps_what_is_used() {
        let store = Store::new(SHARDS * 4);
        let hot = answer("hot.test.");
        let hot_key: Box<[u8]> = hot.key().into();
        store.insert(hot, Instant::now());
        for i in 0..2000 {
            store.insert(answer(&format!("cold{i}.test.")), Instant::now());
            assert!(
                store.with(&hot_key, |_| ()).is_some(),
                "hot name evicted after {i}"
            );
        }
        assert!(store.len() <= store.capacity());
        assert!(store.evictions() > 1000);
    }

    #[test]
    fn replacing_an_answer_keeps_one_entry() {
        let store = Store::new(64);
        for _ in 0..500 {
            store.insert(answer("same.test."), Instant::now());
        }
        assert_eq!(store.len(), 1);
        let shard_clocks: usize = store.shards.iter().map(|s| lock_read(s).clock.len()).sum();
        assert!(shard_clocks <= 2 * store.per_shard + 17);
    }
}
