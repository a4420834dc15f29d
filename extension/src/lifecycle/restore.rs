//! Knowing when the process was restored from a snapshot.
//!
//! Under SnapStart, INIT runs once when a version is published; the memory is then
//! snapshotted and restored later, many times, maybe days later and on another host. Every
//! connection open at the snapshot is dead or worse after it, and `Instant` may not have seen
//! the time pass. A restore is recognised by, in order of trust:
//! - the Telemetry API's `platform.restoreStart`;
//! - under SnapStart, the first event after INIT (no INVOKE reaches an environment that was
//!   not restored first), when the telemetry record is late or missing;
//! - anywhere, the wall clock running ahead of the monotonic clock by more than
//!   [`CLOCK_JUMP`]: time passed that `Instant` did not see.
//!
//! [`RestoreWatch`] only decides; the lifecycle acts (connections retired, the DNS cache aged
//! by the unseen time, the warm-up run again).

use crate::clock::epoch_ms;
use std::time::{Duration, Instant};

/// The wall clock moving this far ahead of the monotonic clock means a restore (or a host
/// that lost time), not drift: NTP slews by far less between two events.
pub(super) const CLOCK_JUMP: Duration = Duration::from_secs(5);

/// Why a restore is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// `platform.restoreStart` arrived.
    Telemetry,
    /// SnapStart: an event came after INIT before any restore record.
    FirstEvent,
    /// The wall clock jumped ahead of the monotonic clock.
    ClockJump,
}

impl Cause {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Cause::Telemetry => "platform.restoreStart",
            Cause::FirstEvent => "first event after the snapshot",
            Cause::ClockJump => "wall clock jumped ahead of the monotonic clock",
        }
    }
}

/// A restore to handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Restore {
    pub cause: Cause,
    /// Wall-clock time that passed without the monotonic clock seeing it.
    pub unseen: Duration,
    /// A SnapStart restore (counted as `restores`), not only a clock jump.
    pub from_snapshot: bool,
}

/// Wall-clock ms minus monotonic ms: constant while both clocks run together.
fn offset_ms(wall_ms: u64, mono: Duration) -> i64 {
    wall_ms as i64 - mono.as_millis() as i64
}

pub(super) struct RestoreWatch {
    snap_start: bool,
    /// SnapStart, INIT over and no restore handled yet.
    awaiting: bool,
    origin: Instant,
    /// [`offset_ms`] when last looked at.
    baseline: i64,
}

impl RestoreWatch {
    pub(super) fn new(snap_start: bool) -> RestoreWatch {
        let origin = Instant::now();
        RestoreWatch {
            snap_start,
            awaiting: false,
            origin,
            baseline: offset_ms(epoch_ms(), Duration::ZERO),
        }
    }

    /// INIT is over: under SnapStart the snapshot may now be taken.
    pub(super) fn init_done(&mut self) {
        self.awaiting = self.snap_start;
    }

    /// Whether everything from before now must be distrusted until a restore is handled.
    pub(super) fn awaiting_restore(&self) -> bool {
        self.awaiting
    }

    /// A `platform.restoreStart` arrived.
    pub(super) fn restore_record(&mut self) -> Option<Restore> {
        self.check(epoch_ms(), self.origin.elapsed(), Some(Cause::Telemetry))
    }

    /// An event from Lambda (INVOKE, SHUTDOWN).
    pub(super) fn event(&mut self) -> Option<Restore> {
        let cause = self.awaiting.then_some(Cause::FirstEvent);
        self.check(epoch_ms(), self.origin.elapsed(), cause)
    }

    /// A timer tick: it may fire before the snapshot as well as after, so only a clock jump
    /// says anything.
    pub(super) fn tick(&mut self) -> Option<Restore> {
        self.check(epoch_ms(), self.origin.elapsed(), None)
    }

    /// The decision, on given clock readings (`mono`: time since `origin`).
    fn check(&mut self, wall_ms: u64, mono: Duration, announced: Option<Cause>) -> Option<Restore> {
        let offset = offset_ms(wall_ms, mono);
        let ahead = offset.saturating_sub(self.baseline);
        // A step backwards (or any drift) moves the baseline; only a jump ahead is unseen time.
        self.baseline = offset;
        let unseen = Duration::from_millis(u64::try_from(ahead).unwrap_or(0));
        let cause = match announced {
            // A restore record after the restore was handled (the first event came first)
            // changes nothing more.
            Some(Cause::Telemetry) if self.snap_start && !self.awaiting => None,
            Some(cause) => Some(cause),
            None => (unseen > CLOCK_JUMP).then_some(Cause::ClockJump),
        }?;
        let from_snapshot = self.awaiting || cause == Cause::Telemetry;
        self.awaiting = false;
        Some(Restore {
            cause,
            unseen,
            from_snapshot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(snap_start: bool) -> RestoreWatch {
        RestoreWatch {
            snap_start,
            awaiting: false,
            origin: Instant::now(),
            baseline: offset_ms(1_000_000, Duration::ZERO),
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn snap_start_the_first_event_after_init_is_a_restore_once() {
        let mut w = watch(true);
        assert_eq!(w.check(1_001_000, S, None), None, "INIT still running");
        w.init_done();
        assert!(w.awaiting_restore());
        let r = w.check(1_002_000, 2 * S, Some(Cause::FirstEvent)).unwrap();
        assert_eq!(r.cause, Cause::FirstEvent);
        assert!(r.from_snapshot);
        assert_eq!(r.unseen, Duration::ZERO, "both clocks moved together");
        assert!(!w.awaiting_restore());
        assert_eq!(w.check(1_003_000, 3 * S, None), None);
        assert_eq!(
            w.check(1_003_100, 3 * S, Some(Cause::Telemetry)),
            None,
            "the late restore record after the first event"
        );
    }

    #[test]
    fn a_restore_record_is_a_restore_and_measures_the_unseen_time() {
        let mut w = watch(true);
        w.init_done();
        // Three days later by the wall clock; the monotonic clock saw one second.
        let later = 1_001_000 + 3 * 86_400_000;
        let r = w.check(later, S, Some(Cause::Telemetry)).unwrap();
        assert_eq!(r.cause, Cause::Telemetry);
        assert!(r.from_snapshot);
        assert_eq!(r.unseen, Duration::from_secs(3 * 86_400));
        assert_eq!(w.check(later + 1_000, 2 * S, None), None);
    }

    #[test]
    fn a_clock_jump_is_noticed_anywhere_but_counted_as_a_restore_only_from_a_snapshot() {
        let mut w = watch(false);
        w.init_done();
        assert!(!w.awaiting_restore());
        assert_eq!(
            w.check(1_004_000, 3 * S, None),
            None,
            "3 s of drift is not a jump"
        );
        let r = w.check(1_014_000, 4 * S, None).unwrap();
        assert_eq!(r.cause, Cause::ClockJump);
        assert!(!r.from_snapshot);
        assert_eq!(r.unseen, Duration::from_secs(9));
        assert_eq!(
            w.check(1_015_000, 5 * S, None),
            None,
            "the baseline moved with the jump"
        );
    }

    #[test]
    fn the_wall_clock_stepping_back_is_no_restore() {
        let mut w = watch(false);
        assert_eq!(w.check(900_000, S, None), None);
        assert_eq!(w.check(901_000, 2 * S, None), None);
    }

    #[test]
    fn outside_snap_start_a_restore_record_still_counts() {
        let mut w = watch(false);
        w.init_done();
        let r = w.check(1_001_000, S, Some(Cause::Telemetry)).unwrap();
        assert!(r.from_snapshot);
    }
}
