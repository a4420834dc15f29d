//! What the DNS cache and the CloudWatch sink still take as one bundle; every other
//! component takes exactly the parts it uses.

use crate::clock::InvocationClock;
use crate::config::Config;
use crate::findings::Findings;
use crate::metrics::Recorder;
use crate::shutdown::Shutdown;
use std::sync::Arc;

#[derive(Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub recorder: Recorder,
    pub clock: Arc<InvocationClock>,
    pub findings: Arc<Findings>,
    pub shutdown: Shutdown,
}

impl Context {
    /// Resolves when the extension is shutting down.
    pub async fn shutting_down(&self) {
        self.shutdown.wait().await;
    }
}
