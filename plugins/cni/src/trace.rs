//! Step timings of one call, printed to stderr when `CNI_RS_TRACE=1`; costs nothing otherwise.

use std::sync::Mutex;
use std::time::Instant;

static STEPS: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());
static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn on() -> bool {
    *ON.get_or_init(|| std::env::var_os("CNI_RS_TRACE").is_some_and(|v| v == "1"))
}

pub fn start() {
    if on() {
        STEPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(("start".into(), Instant::now()));
    }
}

/// Marks the end of a step.
pub fn step(name: &str) {
    if on() {
        STEPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), Instant::now()));
    }
}

/// Prints `TRACE <pid> <step> <µs>` lines: the time each step took since the previous mark.
pub fn report() {
    if !on() {
        return;
    }
    let steps = STEPS.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    for w in steps.windows(2) {
        eprintln!("TRACE {pid} {} {}", w[1].0, w[1].1.duration_since(w[0].1).as_micros());
    }
}
