//! Fault points for tests: `fault::point("bridge:after-veth")` panics when the environment
//! variable `CNI_RS_FAULT` names that point, so a test can make a step of an ADD fail the worst
//! way (a panic) and check that nothing is left. Compiled out of release builds.

/// Panics here when `CNI_RS_FAULT` is `name` (debug builds only).
#[inline]
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    if crate::env::process_flags().fault.as_deref() == Some(name) {
        panic!("fault point {name}");
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
