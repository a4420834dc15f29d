//! Memory handed back after a burst. glibc keeps freed memory in its arenas, so a burst of
//! tunnels or a DNS storm against a dead upstream would leave the extension's RSS high for the
//! life of the environment, taken from the function's memory. Every 2 s (only while the
//! sandbox runs: a frozen one does not tick), once RSS has grown by 2 MiB since the last trim
//! and stopped growing, the free arena memory goes back to the system (`malloc_trim`). Reading
//! RSS is one read of `/proc/self/statm`; a trim runs on a blocking thread (about a
//! millisecond after a burst of a thousand tunnels; docs/soak.md).

use std::time::Duration;

const TICK: Duration = Duration::from_secs(2);
/// Growth since the last trim below which a trim is not worth its walk over the arenas.
const WORTH_TRIMMING: u64 = 2 * 1024 * 1024;

/// Starts the watcher on the current runtime; it ends with the runtime.
pub(super) fn watch() {
    if resident_bytes().is_none() {
        return;
    }
    tokio::spawn(async {
        let mut timer = tokio::time::interval(TICK);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut after_trim = resident_bytes().unwrap_or(0);
        let mut previous = after_trim;
        loop {
            timer.tick().await;
            let Some(now) = resident_bytes() else { return };
            let settled = now <= previous;
            previous = now;
            if settled && now > after_trim + WORTH_TRIMMING {
                let trimmed = tokio::task::spawn_blocking(give_back).await;
                after_trim = resident_bytes().unwrap_or(now);
                previous = after_trim;
                tracing::debug!(
                    before_kib = now / 1024,
                    after_kib = after_trim / 1024,
                    ok = trimmed.is_ok(),
                    "free memory handed back"
                );
            } else if now < after_trim {
                after_trim = now;
            }
        }
    });
}

/// The process's resident set, from `/proc/self/statm` (pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // Lambda's kernels use 4 KiB pages, on x86_64 and arm64 alike.
    Some(pages * 4096)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back() {
    // SAFETY: malloc_trim only walks glibc's own arenas and madvises their free pages.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc() {
        let rss = resident_bytes().expect("/proc/self/statm");
        assert!(rss > 1024 * 1024, "{rss}");
        // A trim with nothing to give back is harmless.
        give_back();
    }
}
