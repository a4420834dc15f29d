//! Memory handed back after a burst. glibc keeps freed memory in its arenas, so a burst of
//! tunnels or a DNS storm against a dead upstream would leave the extension's RSS high for the
//! life of the environment, taken from the function's memory. Every 2 s (only while the
//! sandbox runs: a frozen one does not tick), once 2 MiB more sits free in the arenas than at
//! the last trim (or at the low point since) and RSS has stopped growing, the free memory goes
//! back to the system (`malloc_trim`, on a blocking thread). Reading both figures costs one
//! read of `/proc/self/statm` and one `mallinfo` walk over the free lists (docs/soak.md).

use std::time::Duration;

const TICK: Duration = Duration::from_secs(2);
/// Newly freed memory below which a trim is not worth its walk over the arenas.
const WORTH_TRIMMING: u64 = 2 * 1024 * 1024;

/// Starts the watcher on the current runtime; it ends with the runtime.
pub(super) fn watch() {
    let (Some(mut previous_rss), Some(mut low_free)) = (resident_bytes(), arena_free_bytes())
    else {
        return;
    };
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(TICK);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            let (Some(rss), Some(free)) = (resident_bytes(), arena_free_bytes()) else {
                return;
            };
            let settled = rss <= previous_rss;
            previous_rss = rss;
            low_free = low_free.min(free);
            if settled && free >= low_free + WORTH_TRIMMING {
                let trimmed = tokio::task::spawn_blocking(give_back).await;
                // Trimmed pages still count as free in the arenas: the next trim waits for
                // memory freed after this one.
                low_free = arena_free_bytes().unwrap_or(free);
                previous_rss = resident_bytes().unwrap_or(rss);
                tracing::debug!(
                    rss_before_kib = rss / 1024,
                    rss_after_kib = previous_rss / 1024,
                    ok = trimmed.is_ok(),
                    "free memory handed back"
                );
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

/// Bytes free in glibc's arenas. `mallinfo`, not `mallinfo2`: the latter needs glibc 2.33,
/// newer than Amazon Linux 2's. Its int fields wrap past 2 GiB, far beyond an extension.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn arena_free_bytes() -> Option<u64> {
    // SAFETY: mallinfo only reads glibc's own arena statistics.
    let info = unsafe { libc::mallinfo() };
    Some(u64::from(info.fordblks as u32))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn arena_free_bytes() -> Option<u64> {
    None
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
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn resident_and_free_memory_are_read() {
        let rss = resident_bytes().expect("/proc/self/statm");
        assert!(rss > 1024 * 1024, "{rss}");
        assert!(arena_free_bytes().is_some());
        // A trim with nothing much to give back is harmless.
        give_back();
    }
}
