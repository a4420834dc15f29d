//! Failover drills (`EGRESS_WARDEN_DRILL`): while a drill's window is open, its route's
//! primary is treated as down and the route's traffic goes to the fallback. The window is
//! wall-clock time, so every environment of the function evacuates and returns home together.
//!
//! Each transition is one log line, seen by the first request that meets it: the window
//! opening, the cutover (the first success on the fallback) and, after the window, the return
//! home (the first success on the primary). Cutover and return carry the time they took and
//! the length of the burst of failed attempts (5xx answers, errors) before them: the figures a
//! drill is judged on.

use crate::config::{Drill, DrillWindow};
use crate::metrics::{log_ms, Gauge, Recorder};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub(crate) struct Drills {
    drills: Vec<Tracked>,
    recorder: Recorder,
}

struct Tracked {
    route: String,
    window: Option<DrillWindow>,
    progress: Mutex<Progress>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Scheduled,
    Active,
    Over,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Scheduled => "scheduled",
            Phase::Active => "active",
            Phase::Over => "over",
        }
    }
}

/// What a drill has seen since its last transition.
#[derive(Debug, Default)]
struct Progress {
    phase: Phase,
    since: Option<Instant>,
    /// Waiting for the first success on the fallback (true) or on the primary (false).
    awaiting: Option<bool>,
    first_failure: Option<Instant>,
    last_failure: Option<Instant>,
}

impl Tracked {
    fn phase_at(&self, now: SystemTime) -> Phase {
        match self.window {
            None => Phase::Active,
            Some(w) if now < w.start => Phase::Scheduled,
            Some(w) if now < w.start + w.length => Phase::Active,
            Some(_) => Phase::Over,
        }
    }

    /// Time left in an open window (`None`: no window, or not open).
    fn left(&self, now: SystemTime) -> Option<Duration> {
        let w = self.window?;
        (w.start + w.length).duration_since(now).ok()
    }
}

impl Drills {
    pub(crate) fn new(drills: &[Drill], recorder: Recorder) -> Drills {
        let drills = drills
            .iter()
            .map(|d| Tracked {
                route: d.route.clone(),
                window: d.window,
                progress: Mutex::new(Progress::default()),
            })
            .collect();
        Drills { drills, recorder }
    }

    fn find(&self, route: &str) -> Option<&Tracked> {
        self.drills.iter().find(|d| d.route == route)
    }

    /// Whether `route`'s primary is drilled now; notes (and logs) a window that opened or
    /// closed since the last look.
    pub(crate) fn active(&self, route: &str) -> bool {
        let Some(drill) = self.find(route) else {
            return false;
        };
        let now = SystemTime::now();
        let phase = drill.phase_at(now);
        let mut p = drill.progress.lock().unwrap_or_else(|e| e.into_inner());
        if p.phase != phase {
            self.transition(drill, &mut p, phase, now);
        }
        phase == Phase::Active
    }

    fn transition(&self, drill: &Tracked, p: &mut Progress, phase: Phase, now: SystemTime) {
        let was_active = p.phase == Phase::Active;
        *p = Progress {
            phase,
            since: Some(Instant::now()),
            awaiting: match phase {
                Phase::Active => Some(true),
                Phase::Over if was_active => Some(false),
                _ => None,
            },
            first_failure: None,
            last_failure: None,
        };
        match phase {
            Phase::Active => {
                self.recorder.gauge_add(Gauge::DrillActive, 1);
                let left_s = drill.left(now).map(|d| d.as_secs());
                tracing::info!(
                    route = %drill.route,
                    window_left_s = left_s,
                    "drill started: route {:?} treats its primary as down and goes to its fallback",
                    drill.route
                );
            }
            Phase::Over if was_active => {
                self.recorder.gauge_add(Gauge::DrillActive, -1);
                tracing::info!(
                    route = %drill.route,
                    "drill window closed: route {:?} goes back to its primary",
                    drill.route
                );
            }
            _ => {}
        }
    }

    /// An attempt's result on `route`. The first success where the drill sends traffic (the
    /// fallback while active, the primary after) is the cutover or the return home.
    pub(crate) fn outcome(&self, route: &str, on_fallback: bool, succeeded: bool) {
        let Some(drill) = self.find(route) else {
            return;
        };
        let mut p = drill.progress.lock().unwrap_or_else(|e| e.into_inner());
        let Some(wants_fallback) = p.awaiting else {
            return;
        };
        let now = Instant::now();
        if !succeeded {
            p.first_failure.get_or_insert(now);
            p.last_failure = Some(now);
            return;
        }
        if on_fallback != wants_fallback {
            return;
        }
        p.awaiting = None;
        let took_ms = p.since.map_or(0.0, |s| ms(now - s));
        let burst_ms = match (p.first_failure, p.last_failure) {
            (Some(first), Some(last)) => ms(last - first),
            _ => 0.0,
        };
        if wants_fallback {
            tracing::info!(
                route = %drill.route,
                cutover_ms = log_ms(took_ms),
                failure_burst_ms = log_ms(burst_ms),
                "drill cutover: route {:?} answered from its fallback",
                drill.route
            );
        } else {
            tracing::info!(
                route = %drill.route,
                return_ms = log_ms(took_ms),
                failure_burst_ms = log_ms(burst_ms),
                "drill over: route {:?} answered from its primary again",
                drill.route
            );
        }
    }

    /// Time left in `route`'s open window, if it has one.
    pub(crate) fn left(&self, route: &str) -> Option<Duration> {
        self.find(route)?.left(SystemTime::now())
    }

    /// For the status page: every drill, its phase and the time left.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let now = SystemTime::now();
        let list: Vec<_> = self
            .drills
            .iter()
            .map(|d| {
                let phase = d.phase_at(now);
                serde_json::json!({
                    "route": d.route,
                    "state": phase.as_str(),
                    "left_ms": (phase == Phase::Active)
                        .then(|| d.left(now).map(|l| l.as_millis() as u64))
                        .flatten(),
                    "starts_in_ms": d.window.and_then(|w| w.start.duration_since(now).ok())
                        .map(|s| s.as_millis() as u64),
                })
            })
            .collect();
        serde_json::Value::Array(list)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drill(start_in: i64, length_s: u64) -> Drills {
        let now = SystemTime::now();
        let start = if start_in >= 0 {
            now + Duration::from_secs(start_in as u64)
        } else {
            now - Duration::from_secs(start_in.unsigned_abs())
        };
        Drills::new(
            &[Drill {
                route: "pay".into(),
                window: Some(DrillWindow {
                    start,
                    length: Duration::from_secs(length_s),
                }),
            }],
            Recorder::new(),
        )
    }

    #[test]
    fn the_window_decides() {
        assert!(!drill(60, 600).active("pay"), "not yet");
        assert!(drill(-60, 600).active("pay"), "open");
        assert!(!drill(-700, 600).active("pay"), "over");
        assert!(!drill(-60, 600).active("other"), "another route");
        let always = Drills::new(
            &[Drill {
                route: "pay".into(),
                window: None,
            }],
            Recorder::new(),
        );
        assert!(always.active("pay"), "no window: from INIT on");
    }

    #[test]
    fn an_open_window_counts_as_one_active_drill_and_waits_for_the_cutover() {
        let d = drill(-1, 600);
        assert!(d.active("pay"));
        assert!(d.active("pay"));
        assert_eq!(d.recorder.gauge_value(Gauge::DrillActive), 1);
        d.outcome("pay", true, false);
        d.outcome("pay", true, true);
        let p = d.drills[0].progress.lock().unwrap();
        assert_eq!(p.awaiting, None, "cutover seen");
        assert!(p.first_failure.is_some());
        drop(p);
        let left = d.left("pay").unwrap_or_default();
        assert!(left > Duration::from_secs(590), "{left:?}");
        let doc = d.describe();
        assert_eq!(doc[0]["state"], "active");
    }
}
