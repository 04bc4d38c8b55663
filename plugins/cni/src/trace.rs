//! Step timings of one call, printed to stderr when `CNI_RS_TRACE=1`; costs nothing otherwise.
//!
//! A plugin run in-process by another ([`crate::delegate`]) traces on its own thread, in its
//! own lane: its lines carry `<pid>-<plugin>` instead of the pid, as a child's carry its pid.

use std::cell::Cell;
use std::sync::Mutex;
use std::time::Instant;

static STEPS: Mutex<Vec<(Option<&'static str>, String, Instant)>> = Mutex::new(Vec::new());

thread_local! {
    /// The in-process plugin this thread runs, if any.
    static LANE: Cell<Option<&'static str>> = const { Cell::new(None) };
}

fn on() -> bool {
    crate::env::process_flags().trace
}

fn mark(name: &str) {
    let lane = LANE.with(|l| l.get());
    STEPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((lane, name.to_string(), Instant::now()));
}

pub fn start() {
    if on() {
        mark("start");
    }
}

/// Steps of this thread from now on are those of the in-process plugin `lane`.
pub fn set_lane(lane: &'static str) {
    LANE.with(|l| l.set(Some(lane)));
}

/// Marks the end of a step.
pub fn step(name: &str) {
    if on() {
        mark(name);
    }
}

/// Prints `TRACE <pid> <step> <µs>` lines: the time each step took since the previous mark
/// of its lane (`<pid>-<plugin>` for a plugin run in-process).
pub fn report() {
    if !on() {
        return;
    }
    let steps = STEPS.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    let mut lanes: Vec<Option<&'static str>> = Vec::new();
    for s in steps.iter() {
        if !lanes.contains(&s.0) {
            lanes.push(s.0);
        }
    }
    for lane in lanes {
        let who = match lane {
            None => pid.to_string(),
            Some(l) => format!("{pid}-{l}"),
        };
        let mine: Vec<_> = steps.iter().filter(|s| s.0 == lane).collect();
        for w in mine.windows(2) {
            crate::log!("TRACE {who} {} {}", w[1].1, w[1].2.duration_since(w[0].2).as_micros());
        }
    }
}
