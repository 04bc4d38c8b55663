//! Fault points for tests: `fault::point("bridge:after-veth")` panics when the environment
//! variable `CNI_RS_FAULT` names that point, so a test can make a step of an ADD fail the worst
//! way (a panic) and check that nothing is left; `CNI_RS_FAULT=<point>:kill` makes the process
//! kill itself there (SIGKILL: no unwinding, no undo of its own), as a runtime's kill would.
//! Compiled out of release builds.

/// Panics here when `CNI_RS_FAULT` is `name`, or dies of SIGKILL when it is `name:kill`
/// (debug builds only).
#[inline]
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    if let Some(fault) = crate::env::process_flags().fault.as_deref() {
        if fault == name {
            panic!("fault point {name}");
        }
        if fault.strip_suffix(":kill") == Some(name) {
            // SAFETY: kill(2) of this very process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
