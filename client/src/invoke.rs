//! Running one plugin as libcni's `invoke` package runs it: found in `CNI_PATH`, the caller's
//! environment plus the `CNI_*` variables, the config on stdin, the result (or the spec's error
//! JSON) on stdout, its stderr passed through. Unlike libcni, a call has a deadline: a plugin
//! still running then is killed (code 11).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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
    let pid = child.id();
    let mut input = child.stdin.take().expect("piped stdin");
    let mut output = child.stdout.take().expect("piped stdout");
    let stdin = stdin.to_vec();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // A plugin that exits without reading its config (VERSION) closes the pipe: ignored.
        let _ = input.write_all(&stdin);
        drop(input);
        let mut out = Vec::new();
        let read = output.read_to_end(&mut out);
        let status = child.wait();
        let _ = tx.send((read.map(|_| out), status));
    });
    let (out, status) = match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => {
            // SAFETY: kill(2) of our own child, which has not been reaped (its waiter runs).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = rx.recv();
            return Err(Error::try_again_later(format!(
                "plugin {} ({}) did not finish within {}s: killed",
                bin.display(),
                args.command,
                timeout.as_secs()
            )));
        }
    };
    let out = out.map_err(|e| Error::io(format!("reading the output of plugin {}", bin.display()), e))?;
    let status = status.map_err(|e| Error::io(format!("waiting for plugin {}", bin.display()), e))?;
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
