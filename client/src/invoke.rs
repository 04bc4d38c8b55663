//! Running one plugin as libcni's `invoke` package runs it: found in `CNI_PATH`, the caller's
//! environment plus the `CNI_*` variables, the config on stdin, the result (or the spec's error
//! JSON) on stdout, its stderr passed through. Unlike libcni, a call has a deadline: a plugin
//! still running then is killed (code 11).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use cni::{Error, Result};

/// Finds plugin `plugin` in the directories `paths` (libcni's `FindInPath`: the first regular
/// file of that name). A missing plugin is an error naming it and every directory searched.
pub fn find_in_path(plugin: &str, paths: &[PathBuf]) -> Result<PathBuf> {
    if plugin.is_empty() {
        return Err(Error::invalid_config("no plugin name provided (key \"type\")"));
    }
    if plugin.contains('/') {
        return Err(Error::invalid_config(format!("invalid plugin name: {plugin}")));
    }
    if paths.is_empty() {
        return Err(Error::invalid_env(format!(
            "cannot find plugin \"{plugin}\": CNI_PATH is empty or unset"
        )));
    }
    for dir in paths {
        let p = dir.join(plugin);
        if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
            return Ok(p);
        }
    }
    let dirs: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    Err(Error::invalid_config(format!(
        "failed to find plugin \"{plugin}\" in CNI_PATH (searched {})",
        dirs.join(", ")
    )))
}

/// The variables of one call (libcni's `invoke.Args`).
#[derive(Debug, Clone, Default)]
pub struct Args<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    /// `CNI_ARGS`, joined.
    pub plugin_args: String,
    pub ifname: &'a str,
    pub path: String,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// Runs the plugin `bin` with `stdin`; returns its stdout. A failed plugin's error JSON becomes
/// an [`Error`] with its code, message and details.
///
/// The config is written and the output read on the calling thread (non-blocking pipes and
/// `poll`), and the exit is waited for on a pidfd, all against one deadline: no helper thread
/// per call (a thread's stack, clone and wake-ups are a measurable part of a `cnitool` call).
pub fn exec_plugin(bin: &Path, stdin: &[u8], args: &Args, how: &How) -> Result<Vec<u8>> {
    start_plugin(bin, stdin.to_vec(), args, how)?.finish()
}

/// How a plugin is run.
#[derive(Debug, Clone)]
pub struct How {
    /// The deadline of the call: a plugin still running then is killed (code 11).
    pub timeout: Duration,
    /// In a process group of its own (a Ctrl-C at the terminal does not reach it).
    pub own_group: bool,
    /// Its stderr is read by the call instead of passed through as it comes, and written to
    /// ours when it ends, without the lines that only repeat the error it returns (our
    /// plugins also log their error on stderr, as `<plugin>: error <code>: <msg>`, and so do
    /// IPAM plugins they delegate to): a failure is then one line, the caller's.
    pub drop_error_echo: bool,
}

impl Default for How {
    fn default() -> How {
        How {
            timeout: Duration::from_secs(120),
            own_group: false,
            drop_error_echo: false,
        }
    }
}

/// Whether `line` is a plugin's log of an error that `err` (the call's error) already says:
/// `<name>: error <code>: <msg>` with `msg` in the error's message.
fn is_error_echo(line: &str, err: &Error) -> bool {
    let Some((name, rest)) = line.split_once(": error ") else {
        return false;
    };
    let Some((code, msg)) = rest.split_once(": ") else {
        return false;
    };
    !name.is_empty()
        && !name.contains(char::is_whitespace)
        && !code.is_empty()
        && code.bytes().all(|b| b.is_ascii_digit())
        && !msg.is_empty()
        && err.message().contains(msg)
}

/// Writes a plugin's captured stderr to ours, line by line, without the lines that `err`
/// (when the call failed) already says.
fn pass_on_stderr(captured: &[u8], err: Option<&Error>) {
    let text = String::from_utf8_lossy(captured);
    for line in text.lines() {
        if err.is_some_and(|e| is_error_echo(line, e)) {
            continue;
        }
        cni::log!("{line}");
    }
}

/// A plugin call under way ([`start_plugin`]): its config written as far as the pipe takes it,
/// its output not read yet. The caller may do other work while the plugin runs, then
/// [`Running::finish`]es it.
pub struct Running {
    child: Child,
    /// The plugin's stderr, when it is captured (see [`How::drop_error_echo`]).
    stderr: Option<ChildStderr>,
    captured: Vec<u8>,
    stdin: Vec<u8>,
    written: usize,
    bin: PathBuf,
    command: String,
    timeout: Duration,
    deadline: Instant,
}

/// Starts the plugin `bin` with `stdin` (see [`exec_plugin`]).
pub fn start_plugin(bin: &Path, stdin: Vec<u8>, args: &Args, how: &How) -> Result<Running> {
    let timeout = how.timeout;
    let mut cmd = Command::new(bin);
    if how.own_group {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    cmd.env("CNI_COMMAND", args.command)
        .env("CNI_CONTAINERID", args.container_id)
        .env("CNI_NETNS", args.netns)
        .env("CNI_ARGS", &args.plugin_args)
        .env("CNI_IFNAME", args.ifname)
        .env("CNI_PATH", &args.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if how.drop_error_echo {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
    let deadline = Instant::now() + timeout;
    // A plugin file being replaced right now ("text file busy") is tried again, as libcni does.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(Error::io(format!("executing plugin {}", bin.display()), e)),
        }
    };
    let mut r = Running {
        stderr: child.stderr.take(),
        captured: Vec::new(),
        child,
        stdin,
        written: 0,
        bin: bin.to_path_buf(),
        command: args.command.to_string(),
        timeout,
        deadline,
    };
    let set = [
        r.child.stdin.as_ref().map(|i| i.as_raw_fd()),
        r.child.stdout.as_ref().map(|o| o.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    .try_for_each(set_nonblocking);
    if let Err(e) = set {
        r.kill();
        return Err(Error::io(
            format!("setting up the pipes of plugin {}", r.bin.display()),
            e,
        ));
    }
    // The config at once, without waiting: it nearly always fits the pipe.
    r.write_some();
    Ok(r)
}

/// A call given up half-way (an early return of the caller) does not leave the plugin running.
impl Drop for Running {
    fn drop(&mut self) {
        // Both are no-ops once the plugin is reaped.
        self.kill();
    }
}

impl Running {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn timed_out(&mut self) -> Error {
        self.kill();
        Error::try_again_later(format!(
            "plugin {} ({}) did not finish within {}s: killed",
            self.bin.display(),
            self.command,
            self.timeout.as_secs()
        ))
    }

    /// Writes what the pipe takes of the config; closes it when all is written, or when the
    /// plugin does not read it (EPIPE: a plugin that exits without reading, e.g. VERSION).
    fn write_some(&mut self) {
        let Some(i) = &mut self.child.stdin else { return };
        loop {
            if self.written == self.stdin.len() {
                break;
            }
            match i.write(&self.stdin[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.child.stdin = None;
    }

    /// Writes the rest of the config while reading the output (and the captured stderr) to
    /// its end; `Ok(None)` when the deadline passes first.
    fn talk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut stdout = self.child.stdout.take();
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            self.write_some();
            if let Some(o) = &mut stdout {
                if drain(o, &mut out, &mut buf)? {
                    stdout = None;
                }
            }
            if let Some(e) = &mut self.stderr {
                if drain(e, &mut self.captured, &mut buf)? {
                    self.stderr = None;
                }
            }
            if stdout.is_none() && self.stderr.is_none() {
                return Ok(Some(out));
            }
            let Some(ms) = poll_ms(self.deadline) else {
                return Ok(None);
            };
            let fd = |f: Option<RawFd>| f.unwrap_or(-1);
            let mut fds = [
                libc::pollfd {
                    fd: fd(stdout.as_ref().map(|o| o.as_raw_fd())),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: fd(self.stderr.as_ref().map(|e| e.as_raw_fd())),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: fd(self.child.stdin.as_ref().map(|i| i.as_raw_fd())),
                    events: libc::POLLOUT,
                    revents: 0,
                },
            ];
            // SAFETY: poll on three initialized pollfd structs (a negative fd is ignored).
            if unsafe { libc::poll(fds.as_mut_ptr(), 3, ms) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }

    /// Waits for the plugin: its stdout, or the spec's error JSON as an [`Error`]. A captured
    /// stderr is written out then (see [`How::drop_error_echo`]).
    pub fn finish(mut self) -> Result<Vec<u8>> {
        let res = self.outcome();
        pass_on_stderr(&self.captured, res.as_ref().err());
        res
    }

    fn outcome(&mut self) -> Result<Vec<u8>> {
        let out = match self.talk() {
            Ok(Some(out)) => out,
            Ok(None) => return Err(self.timed_out()),
            Err(e) => {
                self.kill();
                return Err(Error::io(
                    format!("reading the output of plugin {}", self.bin.display()),
                    e,
                ));
            }
        };
        let status = match wait_until(&mut self.child, self.deadline) {
            Ok(Some(st)) => st,
            Ok(None) => return Err(self.timed_out()),
            Err(e) => return Err(Error::io(format!("waiting for plugin {}", self.bin.display()), e)),
        };
        if status.success() {
            return Ok(out);
        }
        if out.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(Error::internal(format!(
                "netplugin failed with no error message: {status}"
            )));
        }
        match serde_json::from_slice::<WireError>(&out) {
            Ok(e) => Err(Error::delegated(e.code, e.msg, e.details)),
            Err(_) => Err(Error::internal(format!(
                "netplugin failed ({status}): {:?}",
                String::from_utf8_lossy(&out).trim()
            ))),
        }
    }
}

/// Reads what `r` (non-blocking) has now into `into`; `Ok(true)` at its end.
fn drain(r: &mut impl Read, into: &mut Vec<u8>, buf: &mut [u8]) -> std::io::Result<bool> {
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Milliseconds left until `deadline` for `poll` (at least 1 while time is left); `None` when it
/// has passed.
fn poll_ms(deadline: Instant) -> Option<i32> {
    let left = deadline.checked_duration_since(Instant::now())?;
    if left.is_zero() {
        return None;
    }
    Some(left.as_millis().clamp(1, i32::MAX as u128) as i32)
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own (a pipe end of the child's stdin or stdout).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the child to exit until `deadline` (`Ok(None)`: still running then). It has
/// closed its stdout, so it is nearly always done; the wait is on a pidfd, or, on a kernel
/// without them (before 5.3), by polling `try_wait`.
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    if let Some(st) = child.try_wait()? {
        return Ok(Some(st));
    }
    // SAFETY: pidfd_open of our own child, which is not reaped yet (no try_wait returned it).
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    let pidfd = (fd >= 0).then(|| {
        // SAFETY: a new descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
    });
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        let Some(ms) = poll_ms(deadline) else {
            return Ok(None);
        };
        match &pidfd {
            Some(p) => {
                let mut pfd = libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one initialized pollfd.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            None => std::thread::sleep(Duration::from_millis(1).min(Duration::from_millis(ms as u64))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A plugin made of the shell script `body`, in a directory of its own removed on drop.
    struct Plugin(PathBuf);

    impl Drop for Plugin {
        fn drop(&mut self) {
            if let Some(d) = self.0.parent() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }

    impl std::ops::Deref for Plugin {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    fn plugin(body: &str) -> Plugin {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "cni-client-invoke-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("plugin");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Plugin(p)
    }

    fn call(bin: &Path, stdin: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let args = Args {
            command: "ADD",
            container_id: "c1",
            netns: "/run/netns/x",
            plugin_args: String::new(),
            ifname: "eth0",
            path: String::new(),
        };
        let how = How {
            timeout,
            ..Default::default()
        };
        exec_plugin(bin, stdin, &args, &how)
    }

    #[test]
    fn a_config_larger_than_the_pipe_is_written_while_the_output_is_read() {
        // cat echoes while it reads: neither side may wait for the other to finish first.
        let p = plugin("exec cat");
        let big: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let out = call(&p, &big, Duration::from_secs(20)).unwrap();
        assert_eq!(out.len(), big.len());
        assert!(out == big);
    }

    #[test]
    fn a_plugin_that_does_not_read_its_config_is_fine() {
        let p = plugin("echo '{\"cniVersion\":\"1.0.0\"}'");
        let big = vec![b' '; 1_000_000];
        let out = call(&p, &big, Duration::from_secs(20)).unwrap();
        assert_eq!(String::from_utf8_lossy(&out).trim(), "{\"cniVersion\":\"1.0.0\"}");
    }

    #[test]
    fn the_environment_and_the_error_json_are_libcnis() {
        let p = plugin(
            "cat >/dev/null; echo \"{\\\"code\\\": 7, \\\"msg\\\": \\\"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME\\\", \\\"details\\\": \\\"d\\\"}\"; exit 1",
        );
        let e = call(&p, b"{}", Duration::from_secs(20)).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("ADD c1 eth0"), "{e}");
    }

    #[test]
    fn a_captured_stderr_larger_than_the_pipe_does_not_block_the_plugin() {
        let p = plugin("cat >/dev/null; head -c 300000 /dev/zero | tr '\\0' x >&2; echo '{}'");
        let how = How {
            timeout: Duration::from_secs(20),
            drop_error_echo: true,
            ..Default::default()
        };
        let args = Args {
            command: "ADD",
            ..Default::default()
        };
        let mut r = start_plugin(&p, b"{}".to_vec(), &args, &how).unwrap();
        let out = r.outcome().unwrap();
        assert_eq!(String::from_utf8_lossy(&out).trim(), "{}");
        assert_eq!(r.captured.len(), 300_000);
    }

    #[test]
    fn only_the_echo_of_the_returned_error_is_dropped() {
        let e = Error::delegated(7, "bridge: invalid mtu 20: must be 0", "");
        for (line, echo) in [
            ("bridge: error 7: bridge: invalid mtu 20: must be 0", true),
            // An IPAM plugin's, whose message the delegating plugin's error contains.
            ("host-local: error 7: invalid mtu 20", true),
            ("bridge: cleaning up after a failed ADD: link busy", false),
            ("bridge: error 7: something else", false),
            ("a note: error 7: invalid mtu 20 x", false),
            ("bridge: error x: invalid mtu 20", false),
        ] {
            assert_eq!(is_error_echo(line, &e), echo, "{line}");
        }
    }

    #[test]
    fn a_plugin_past_its_deadline_is_killed() {
        // Still running with its stdout open, then still running after closing it.
        for body in ["cat >/dev/null; exec sleep 30", "cat >/dev/null; exec sleep 30 >&-"] {
            let p = plugin(body);
            let t = Instant::now();
            let e = call(&p, b"{}", Duration::from_millis(300)).unwrap_err();
            assert_eq!(e.code(), cni::error::code::TRY_AGAIN_LATER, "{body}: {e}");
            assert!(t.elapsed() < Duration::from_secs(10), "{body}: {:?}", t.elapsed());
        }
    }
}
