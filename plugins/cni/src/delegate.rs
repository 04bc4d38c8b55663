//! Running the IPAM plugin named by `ipam.type`, as the spec's delegation says: same
//! environment, same config on stdin, its result or error passed back.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};

use crate::env::Command;
use crate::error::{Error, Result};
use crate::skel::Call;
use crate::types::CniResult;

/// Finds plugin `name` in the `CNI_PATH` directories.
pub fn find_plugin(name: &str, path: &[PathBuf]) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::InvalidConfig(format!(
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
    Err(Error::InvalidConfig(format!(
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
    spawn(plugin_type, Command::Del, call, true)?.wait().map(|_| ())
}

/// A delegated plugin running while this one goes on with its own work.
pub struct Pending {
    child: std::process::Child,
    plugin_type: String,
    cmd: Command,
    bin: PathBuf,
}

/// Starts `plugin_type` for `cmd` with the call's config and returns at once: the IPAM
/// plugin's process start and its work overlap with ours. [`Pending::wait`] collects it.
pub fn start(plugin_type: &str, cmd: Command, call: &Call) -> Result<Pending> {
    spawn(plugin_type, cmd, call, false)
}

fn spawn(plugin_type: &str, cmd: Command, call: &Call, undo: bool) -> Result<Pending> {
    let bin = find_plugin(plugin_type, &call.env.path)?;
    let mut proc = Proc::new(&bin);
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
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        // A plugin that exits without reading stdin gives EPIPE; its exit status tells more.
        // (Plugins read their whole stdin first, so this does not wait for their work.)
        let _ = stdin.write_all(&call.stdin);
    }
    Ok(Pending {
        child,
        plugin_type: plugin_type.to_string(),
        cmd,
        bin,
    })
}

/// What an IPAM ADD gave: its result (which must hold an address), and whether the IPAM plugin
/// may hold a lease for the attachment now, which a failed ADD must release: it does when the
/// plugin succeeded, even if its result is unreadable or empty; a failed IPAM ADD reserved
/// nothing (and may have failed because the attachment already holds a lease, not ours to drop).
pub struct IpamAdd {
    pub result: Result<CniResult>,
    pub holds_lease: bool,
}

impl Pending {
    /// Waits for an ADD; see [`IpamAdd`].
    pub fn wait_add(self) -> IpamAdd {
        let plugin_type = self.plugin_type.clone();
        match self.wait() {
            Ok(Some(r)) if r.ips.is_empty() => IpamAdd {
                result: Err(Error::InvalidConfig(format!(
                    "IPAM plugin \"{plugin_type}\" returned no IP address"
                ))),
                holds_lease: true,
            },
            Ok(Some(r)) => IpamAdd {
                result: Ok(r),
                holds_lease: true,
            },
            Ok(None) => IpamAdd {
                result: Err(Error::Internal("IPAM ADD gave no result".into())),
                holds_lease: true,
            },
            Err(e) => {
                let holds_lease = matches!(e, Error::Decode(_));
                IpamAdd {
                    result: Err(e),
                    holds_lease,
                }
            }
        }
    }

    /// Waits for the plugin; its parsed result for ADD, or its error.
    pub fn wait(self) -> Result<Option<CniResult>> {
        let Pending {
            child,
            plugin_type,
            cmd,
            bin,
        } = self;
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io(format!("waiting for IPAM plugin {}", bin.display()), e))?;
        crate::trace::step(&format!("ipam {}", cmd.as_str()));
        if !out.status.success() {
            return Err(parse_error(&plugin_type, &out.stdout, out.status));
        }
        if cmd != Command::Add {
            return Ok(None);
        }
        CniResult::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| e.context(format!("result of IPAM plugin \"{plugin_type}\"")))
    }
}

fn parse_error(plugin_type: &str, stdout: &[u8], status: std::process::ExitStatus) -> Error {
    #[derive(serde::Deserialize)]
    struct E {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<E>(stdout) {
        Ok(e) => Error::Delegated {
            code: e.code,
            msg: e.msg,
            details: e.details,
        },
        Err(_) => Error::Internal(format!(
            "IPAM plugin \"{plugin_type}\" failed ({status}) without an error JSON: {}",
            String::from_utf8_lossy(stdout).trim()
        )),
    }
}
