//! Running one plugin as libcni's `invoke` package runs it: found in `CNI_PATH`, the caller's
//! environment plus the `CNI_*` variables, the config on stdin, the result (or the spec's error
//! JSON) on stdout, its stderr passed through. Unlike libcni, a call has a deadline: a plugin
//! still running then is killed (code 11).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
pub fn exec_plugin(bin: &Path, stdin: &[u8], args: &Args, timeout: Duration, own_group: bool) -> Result<Vec<u8>> {
    let mut cmd = Command::new(bin);
    if own_group {
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
        .stderr(Stdio::inherit());
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
    let timed_out = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
        Error::try_again_later(format!(
            "plugin {} ({}) did not finish within {}s: killed",
            bin.display(),
            args.command,
            timeout.as_secs()
        ))
    };
    let out = match talk(&mut child, stdin, deadline) {
        Ok(Some(out)) => out,
        Ok(None) => return Err(timed_out(&mut child)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::io(format!("reading the output of plugin {}", bin.display()), e));
        }
    };
    let status = match wait_until(&mut child, deadline) {
        Ok(Some(st)) => st,
        Ok(None) => return Err(timed_out(&mut child)),
        Err(e) => return Err(Error::io(format!("waiting for plugin {}", bin.display()), e)),
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

/// Writes `input` to the child's stdin (then closes it) while reading its stdout to the end;
/// `Ok(None)` when the deadline passes first. A plugin that exits without reading its config
/// (VERSION) closes the pipe: that is not an error.
fn talk(child: &mut Child, input: &[u8], deadline: Instant) -> std::io::Result<Option<Vec<u8>>> {
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped stdout");
    if let Some(i) = &stdin {
        set_nonblocking(i.as_raw_fd())?;
    }
    set_nonblocking(stdout.as_raw_fd())?;
    let mut written = 0;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        // The config first, without waiting: it nearly always fits the pipe at once.
        if let Some(i) = &mut stdin {
            loop {
                if written == input.len() {
                    stdin = None;
                    break;
                }
                match i.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // EPIPE: the plugin does not read (more of) its config.
                    Err(_) => {
                        stdin = None;
                        break;
                    }
                }
            }
        }
        loop {
            match stdout.read(&mut buf) {
                Ok(0) => return Ok(Some(out)),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let Some(ms) = poll_ms(deadline) else {
            return Ok(None);
        };
        let mut fds = [
            libc::pollfd {
                fd: stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stdin.as_ref().map_or(-1, |i| i.as_raw_fd()),
                events: libc::POLLOUT,
                revents: 0,
            },
        ];
        // SAFETY: poll on two initialized pollfd structs (a negative fd is ignored).
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
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
        exec_plugin(bin, stdin, &args, timeout, false)
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
