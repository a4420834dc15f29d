//! Polling for a condition the test cannot be told about (a port listening, a log line, a
//! figure reaching a count).

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it holds (true) or `within` passes (false); `check` runs
/// at least once, and once more at the deadline.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
