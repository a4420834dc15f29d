//! The extension-wide shutdown signal: the lifecycle triggers it at SHUTDOWN (or SIGTERM);
//! listeners stop accepting and in-flight requests are told it is their connection's last.

use tokio::sync::watch;

/// The lifecycle's end of the signal.
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A listener's end of the signal. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new signal, not yet triggered.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Resolves once the extension is shutting down (or the trigger is gone, which is a
    /// shutdown too).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|down| *down).await;
    }

    /// Whether shutdown has begun: answers now are the connection's last.
    pub fn has_begun(&self) -> bool {
        *self.0.borrow()
    }
}
