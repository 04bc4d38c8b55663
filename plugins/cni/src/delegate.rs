//! Running the IPAM plugin named by `ipam.type`, as the spec's delegation says: same
//! environment, same config on stdin, its result or error passed back.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};

use crate::env::Command;
use crate::error::{Error, Result, Source};
use crate::skel::Call;
use crate::types::CniResult;

/// Finds plugin `name` in the `CNI_PATH` directories.
pub fn find_plugin(name: &str, path: &[PathBuf]) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::invalid_config(format!(
            "invalid plugin type \"{}\": must be a file name in CNI_PATH",
            name.escape_debug()
        )));
    }
    for dir in path {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::invalid_config(format!(
        "failed to find plugin \"{name}\" (ipam.type) in CNI_PATH {:?}",
        path
    )))
}

/// Set (to `1`) in the environment of the IPAM DEL that a plugin runs to undo its own failed
/// ADD: our host-local then also puts back the round-robin pointers that ADD moved, so that the
/// failed call leaves the store as it found it. Other IPAM plugins ignore it.
pub const UNDO_ENV: &str = "CNI_RS_UNDO_FAILED_ADD";

/// Runs `plugin_type` for `cmd` with the call's config; returns its parsed result for ADD.
pub fn exec(plugin_type: &str, cmd: Command, call: &Call) -> Result<Option<CniResult>> {
    start(plugin_type, cmd, call)?.wait()
}

/// The IPAM DEL that undoes the IPAM ADD of this call, which failed after IPAM succeeded.
pub fn undo_add(plugin_type: &str, call: &Call) -> Result<()> {
    let bin = find_plugin(plugin_type, &call.env.path)?;
    let child = spawn(&bin, Command::Del, &call.stdin, true)?;
    Pending {
        child: Some(child),
        plugin_type: plugin_type.to_string(),
        cmd: Command::Del,
        bin,
        stdin: Vec::new(),
    }
    .wait()
    .map(|_| ())
}

/// A delegated plugin running while this one goes on with its own work. Dropped before it
/// was waited for (an early return, a panic unwinding), it is killed and reaped, and an ADD's
/// possible reservation is released by a DEL of the same attachment: no process and no lease
/// outlive the call.
pub struct Pending {
    child: Option<std::process::Child>,
    plugin_type: String,
    cmd: Command,
    bin: PathBuf,
    /// The config, for the DEL that releases what a dropped ADD may have reserved.
    stdin: Vec<u8>,
}

/// Starts `plugin_type` for `cmd` with the call's config and returns at once: the IPAM
/// plugin's process start and its work overlap with ours. [`Pending::wait`] collects it.
pub fn start(plugin_type: &str, cmd: Command, call: &Call) -> Result<Pending> {
    let bin = find_plugin(plugin_type, &call.env.path)?;
    let child = spawn(&bin, cmd, &call.stdin, false)?;
    Ok(Pending {
        child: Some(child),
        plugin_type: plugin_type.to_string(),
        cmd,
        bin,
        stdin: if cmd == Command::Add {
            call.stdin.clone()
        } else {
            Vec::new()
        },
    })
}

/// Starts `bin` for `cmd`; `undo`: a DEL that undoes a failed ADD of this call ([`UNDO_ENV`]).
fn spawn(bin: &std::path::Path, cmd: Command, stdin_bytes: &[u8], undo: bool) -> Result<std::process::Child> {
    let mut proc = Proc::new(bin);
    if undo {
        proc.env(UNDO_ENV, "1");
    }
    let mut child = proc
        .env("CNI_COMMAND", cmd.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("running IPAM plugin {}", bin.display()), e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A plugin that exits without reading stdin gives EPIPE; its exit status tells more.
    // (Plugins read their whole stdin first, so this does not wait for their work.)
    let _ = stdin.write_all(stdin_bytes);
    Ok(child)
}

/// What an IPAM ADD gave: its result (which must hold an address), and whether the IPAM
/// plugin may hold a lease for the attachment now, which a failed ADD must release.
pub struct IpamAdd {
    pub result: Result<CniResult>,
    /// `false` only when the plugin itself reported an error: it reserved nothing then (and
    /// may have failed because the attachment holds a lease that is not ours to drop). A
    /// plugin that succeeded holds a lease even if its result is unreadable or empty, and one
    /// that died without saying why may hold one.
    pub holds_lease: bool,
}

/// How a delegated plugin ended.
enum Ended {
    /// Exit status 0, with its stdout.
    Succeeded(Vec<u8>),
    /// It said why it failed (an error JSON).
    Reported(Error),
    /// It failed without saying why (killed, crashed, no error JSON), or could not be waited
    /// for.
    Unexplained(Error),
}

impl Pending {
    fn finish(&mut self) -> Ended {
        let child = self.child.take().expect("a pending plugin is finished once");
        let out = match child.wait_with_output() {
            Ok(o) => o,
            Err(e) => {
                return Ended::Unexplained(Error::io(format!("waiting for IPAM plugin {}", self.bin.display()), e))
            }
        };
        crate::trace::step(&format!("ipam {}", self.cmd.as_str()));
        if out.status.success() {
            return Ended::Succeeded(out.stdout);
        }
        match parse_error(&out.stdout) {
            Some(e) => Ended::Reported(e),
            None => Ended::Unexplained(
                Error::internal(format!(
                    "IPAM plugin \"{}\" failed ({}) without an error JSON: {}",
                    self.plugin_type,
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim()
                ))
                .with_source(Source::Exit(out.status)),
            ),
        }
    }

    fn decode(&self, stdout: &[u8]) -> Result<CniResult> {
        CniResult::from_slice(stdout).map_err(|e| e.context(format!("result of IPAM plugin \"{}\"", self.plugin_type)))
    }

    /// Waits for an ADD; see [`IpamAdd`].
    pub fn wait_add(mut self) -> IpamAdd {
        match self.finish() {
            Ended::Succeeded(out) => IpamAdd {
                result: self.decode(&out).and_then(|r| {
                    if r.ips.is_empty() {
                        Err(Error::invalid_config(format!(
                            "IPAM plugin \"{}\" returned no IP address",
                            self.plugin_type
                        )))
                    } else {
                        Ok(r)
                    }
                }),
                holds_lease: true,
            },
            Ended::Reported(e) => IpamAdd {
                result: Err(e),
                holds_lease: false,
            },
            Ended::Unexplained(e) => IpamAdd {
                result: Err(e),
                holds_lease: true,
            },
        }
    }

    /// Waits for the plugin; its parsed result for ADD, or its error.
    pub fn wait(mut self) -> Result<Option<CniResult>> {
        match self.finish() {
            Ended::Succeeded(out) if self.cmd == Command::Add => self.decode(&out).map(Some),
            Ended::Succeeded(_) => Ok(None),
            Ended::Reported(e) | Ended::Unexplained(e) => Err(e),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        let _ = child.wait();
        if self.cmd != Command::Add {
            return;
        }
        // It may have reserved an address before it was killed.
        // The ADD failed (it was dropped): its DEL undoes it, pointers included.
        let released = spawn(&self.bin, Command::Del, &self.stdin, true).and_then(|c| {
            c.wait_with_output()
                .map_err(|e| Error::io("waiting for IPAM DEL", e))
                .and_then(|o| {
                    if o.status.success() {
                        Ok(())
                    } else {
                        Err(parse_error(&o.stdout)
                            .unwrap_or_else(|| Error::internal(format!("IPAM DEL failed ({})", o.status))))
                    }
                })
        });
        if let Err(e) = released {
            eprintln!(
                "releasing what IPAM plugin \"{}\" may have reserved: {e}",
                self.plugin_type
            );
        }
    }
}

/// The error JSON a failed plugin printed, if it printed one.
fn parse_error(stdout: &[u8]) -> Option<Error> {
    #[derive(serde::Deserialize)]
    struct E {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    serde_json::from_slice::<E>(stdout)
        .ok()
        .map(|e| Error::delegated(e.code, e.msg, e.details))
}
