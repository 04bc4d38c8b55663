//! The one way the plugins write to stderr: [`log!`](crate::log), a line for a person (an
//! error, a notice, a panic report, a trace).
//!
//! A write to stderr never fails a call. The runtime may have closed the pipe it reads our
//! stderr from (EPIPE), or started us without a descriptor 2 (EBADF; Rust's runtime then puts
//! `/dev/null` there); `eprintln!` panics on such a failure, and a panic while the panic hook
//! reports a panic aborts the process: the call would end without its error JSON, half way
//! through its work. So every failure of the write is ignored here. SIGPIPE stays ignored, as
//! Rust sets it up, so that a write to a closed pipe returns EPIPE instead of killing us.
//!
//! Product code must not use `eprintln!`/`eprint!` or `std::io::stderr()` directly: clippy's
//! `print_stderr` (denied in every product crate) and the workspace's `disallowed-methods`
//! (clippy.toml) say so.

use std::io::Write;

/// Writes one line (`args` and a newline) to stderr in one write, ignoring every error. One
/// write: lines of the threads of one call (an IPAM plugin run in-process) and of the
/// processes sharing the runtime's pipe do not interleave (a pipe takes up to 4 KiB whole).
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut text = args.to_string();
    text.push('\n');
    #[allow(clippy::disallowed_methods)] // the one use: this is the helper
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Writes a line to stderr, like `eprintln!`, but never fails or panics (see [`crate::log`]):
/// `cni::log!("host-local: {path}: {e}")`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::line(::std::format_args!($($arg)*))
    };
}
