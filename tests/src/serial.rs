//! One test at a time where it matters: the end-to-end tests share one binary, and tests that
//! measure time, memory or descriptors, hold a thousand sockets or run heavy processes (an
//! extension with upstreams and clients, a CloudWatch server, a network lab) make each other's
//! figures, and so outcomes, flaky on two cores. Such tests hold the same guard; the others run
//! beside them.
//!
//! The guard is a tokio mutex: it is never poisoned (a failed test leaves it free for the
//! next), and async tests can hold it across `.await`.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};

static TURN: Mutex<()> = Mutex::const_new(());

/// The guard, for a synchronous test (not from inside an async runtime).
pub fn exclusive() -> MutexGuard<'static, ()> {
    TURN.blocking_lock()
}

/// The guard, for an async test.
pub async fn exclusive_async() -> MutexGuard<'static, ()> {
    TURN.lock().await
}

/// Runs `f` holding the guard, failing the test when `f` takes longer than `limit` (the wait
/// for the guard is not counted).
pub async fn one_at_a_time<F: Future>(limit: Duration, f: F) -> F::Output {
    let _turn = exclusive_async().await;
    tokio::time::timeout(limit, f)
        .await
        .expect("test took too long")
}
