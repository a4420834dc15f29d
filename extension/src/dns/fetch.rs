//! One upstream query per question, however many clients and prefetches wait for it: the
//! first asker starts it, the others join it, and the answer is stored before it is handed
//! out.

use super::answer::{Answer, Kind};
use super::core::Core;
use super::upstream::UpstreamFailure;
use hickory_proto::op::{Query as Question, ResponseCode};
use hickory_proto::serialize::binary::BinDecodable;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// An answer on its way from the upstreams; `None` until it arrives.
pub(super) type Pending = watch::Receiver<Option<Arc<Answer>>>;

impl Core {
    /// Joins the upstream query in flight for `key`, or starts one.
    pub(super) fn fetch(self: &Arc<Self>, key: &[u8]) -> Pending {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pending) = inflight.get(key) {
            return pending.clone();
        }
        let (done, pending) = watch::channel(None);
        inflight.insert(key.into(), pending.clone());
        drop(inflight);
        let guard = InflightGuard {
            core: self.clone(),
            key: key.into(),
        };
        tokio::spawn(async move {
            let answer = guard.core.ask_upstreams(&guard.key).await;
            done.send_replace(Some(answer));
            // `guard` drops here (or on a panic), taking the key out of `inflight`.
        });
        pending
    }

    async fn ask_upstreams(&self, key: &[u8]) -> Arc<Answer> {
        let Some(question) = question_of(key) else {
            return Arc::new(failure_for(key, ResponseCode::ServFail));
        };
        let response = self.upstreams.query(&question).await;
        let now = self.now();
        let answer = match response {
            Ok(response) => Answer::from_upstream(&question, &response, &self.policy, now),
            Err(UpstreamFailure::Rcode(rcode)) => Answer::failure(&question, rcode, now),
            Err(_) => Answer::failure(&question, ResponseCode::ServFail, now),
        };
        let answer = Arc::new(answer);
        if answer.cacheable() {
            self.store.insert(answer.clone(), now);
        } else if answer.kind == Kind::Failure {
            if let Some(old) = self.store.get(key) {
                old.note_refresh_failure(now);
            }
        }
        answer
    }
}

pub(super) async fn wait(mut pending: Pending) -> Option<Arc<Answer>> {
    // An error means the fetch task died without an answer.
    pending
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|a| a.clone())
}

struct InflightGuard {
    core: Arc<Core>,
    key: Box<[u8]>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut inflight = self.core.inflight.lock().unwrap_or_else(|p| p.into_inner());
        inflight.remove(&self.key);
    }
}

/// The question a cache key stands for.
pub(crate) fn question_of(key: &[u8]) -> Option<Question> {
    Question::from_bytes(key).ok()
}

pub(super) fn failure_for(key: &[u8], rcode: ResponseCode) -> Answer {
    let question = question_of(key).unwrap_or_default();
    Answer::failure(&question, rcode, Instant::now())
}
