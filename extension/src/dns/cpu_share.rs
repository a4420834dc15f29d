//! Whether the UDP thread is short of CPU: its CPU share ran out (a CFS quota, the way Lambda
//! gives a function a fraction of a vCPU by memory size) or other work holds its core. Then the
//! thread sends a batch's answers together and spends less per answer; with CPU to spare it
//! sends each answer as soon as it is ready, which keeps clients from falling into step.
//!
//! The signal is the time the thread waited for a CPU while runnable, from
//! `/proc/thread-self/schedstat`, read at most every `CHECK_EVERY` (one `pread`): a throttled
//! thread waits hundreds of microseconds per time slice, one with CPU to spare a few
//! (measured under dnsperf: 340 µs at 0.25 CPU, 3–12 µs on a whole core). Where the
//! kernel keeps no such statistics the thread never counts as short, and answers as before.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// How often the scheduler statistics are read.
const CHECK_EVERY: Duration = Duration::from_millis(10);

/// Mean wait for a CPU per time slice, over a check, that counts as short of CPU.
const SLICE_WAIT: Duration = Duration::from_micros(100);

/// How long the thread counts as short of CPU after a sign of it: two checks. A quota renews
/// it every period (with the default 100 ms period, the check after each throttle covers most
/// of the 25 ms that a quarter of a CPU then runs); a one-off delay, such as the host holding
/// the vCPU back for a few milliseconds, is soon over.
const SHORT_FOR: Duration = Duration::from_millis(20);

pub(crate) struct CpuShare {
    /// This thread's schedstat ("run ns, wait ns, slices"); None where the kernel has none.
    schedstat: Option<File>,
    last_check: Instant,
    last_wait_ns: u64,
    last_slices: u64,
    short_until: Instant,
}

impl CpuShare {
    /// For the calling thread (the schedstat file read is the opening thread's).
    pub(crate) fn for_this_thread(now: Instant) -> CpuShare {
        let mut share = CpuShare::without_schedstat(now);
        share.schedstat = File::open("/proc/thread-self/schedstat").ok();
        if let Some((wait, slices)) = share.read_schedstat() {
            (share.last_wait_ns, share.last_slices) = (wait, slices);
        }
        share
    }

    fn without_schedstat(now: Instant) -> CpuShare {
        CpuShare {
            schedstat: None,
            last_check: now,
            last_wait_ns: 0,
            last_slices: 0,
            short_until: now,
        }
    }

    /// True while the thread is short of CPU; called once per batch, with the batch's time.
    pub(crate) fn short(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.last_check) >= CHECK_EVERY {
            self.last_check = now;
            if let Some((wait, slices)) = self.read_schedstat() {
                self.note_waits(now, wait, slices);
            }
        }
        now < self.short_until
    }

    /// Takes the thread's totals of time waited for a CPU (ns) and of time slices.
    fn note_waits(&mut self, now: Instant, wait_ns: u64, slices: u64) {
        let waited = wait_ns.saturating_sub(self.last_wait_ns);
        let new_slices = slices.saturating_sub(self.last_slices);
        (self.last_wait_ns, self.last_slices) = (wait_ns, slices);
        if new_slices > 0 && waited / new_slices >= SLICE_WAIT.as_nanos() as u64 {
            self.short_until = now + SHORT_FOR;
        }
    }

    fn read_schedstat(&self) -> Option<(u64, u64)> {
        let file = self.schedstat.as_ref()?;
        let mut buf = [0u8; 96];
        let len = file.read_at(&mut buf, 0).ok()?;
        parse_schedstat(buf.get(..len)?)
    }
}

/// "run_ns wait_ns slices\n" → (wait_ns, slices).
fn parse_schedstat(text: &[u8]) -> Option<(u64, u64)> {
    let mut fields = std::str::from_utf8(text).ok()?.split_ascii_whitespace();
    let _run = fields.next()?;
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, us: u64) -> Instant {
        start + Duration::from_micros(us)
    }

    #[test]
    fn long_waits_per_time_slice_mean_short() {
        let start = Instant::now();
        let mut share = CpuShare::without_schedstat(start);
        // 2,000 slices with 3 µs of waiting each: the wake-ups of a thread with CPU to spare.
        share.note_waits(at(start, 10_000), 6_000_000, 2_000);
        assert!(!share.short(at(start, 10_001)));
        // 18 slices and 7.5 ms of waiting: throttled, and short of CPU for two checks after.
        share.note_waits(at(start, 20_000), 13_500_000, 2_018);
        assert!(share.short(at(start, 20_001)));
        assert!(share.short(at(start, 39_999)));
        assert!(!share.short(at(start, 40_000)));
    }

    #[test]
    fn this_threads_schedstat_is_read_and_counts_up() {
        let start = Instant::now();
        let share = CpuShare::for_this_thread(start);
        let Some((wait, slices)) = share.read_schedstat() else {
            // A kernel without CONFIG_SCHED_INFO: the thread never counts as short of CPU.
            assert!(share.schedstat.is_none());
            return;
        };
        std::thread::sleep(Duration::from_millis(2));
        let (wait_after, slices_after) = share.read_schedstat().unwrap_or_default();
        assert!(wait_after >= wait);
        assert!(slices_after > slices, "a sleep ends a time slice");
    }

    #[test]
    fn schedstat_lines_parse() {
        assert_eq!(
            parse_schedstat(b"504331553 1231456499 3667\n"),
            Some((1_231_456_499, 3667))
        );
        assert_eq!(parse_schedstat(b"12 34"), None);
        assert_eq!(parse_schedstat(b"a b c"), None);
    }
}
