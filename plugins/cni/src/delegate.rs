//! Running the IPAM plugin named by `ipam.type`, as the spec's delegation says: same
//! environment, same config on stdin, its result or error passed back.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::Mutex;

use crate::env::Command;
use crate::error::{Error, Result, Source};
use crate::skel::{Call, Plugin};
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

pub use crate::env::{TOKEN_ENV, UNDO_ENV};

/// Runs `plugin_type` for `cmd` with the call's config; returns its parsed result for ADD.
pub fn exec(plugin_type: &str, cmd: Command, call: &Call) -> Result<Option<CniResult>> {
    start(plugin_type, cmd, call)?.wait()
}

/// The IPAM DEL that undoes the IPAM ADD of this call, which failed after IPAM succeeded.
pub fn undo_add(plugin_type: &str, call: &Call) -> Result<()> {
    let found = find_plugin(plugin_type, &call.env.path)?;
    run_undo(plugin_type, &found, &call.stdin, &call.env.token)
}

/// Runs the IPAM DEL that undoes the ADD `token` of this call (see [`UNDO_ENV`]) and waits
/// for it: the one runner of an undo, for a failed ADD and for a dropped [`Pending`].
fn run_undo(plugin_type: &str, bin: &Path, stdin: &[u8], token: &str) -> Result<()> {
    let (run, bin) = launch(plugin_type, bin, Command::Del, stdin, token, true)?;
    Pending {
        run: Some(run),
        plugin_type: plugin_type.to_string(),
        cmd: Command::Del,
        bin,
        stdin: Vec::new(),
        token: token.to_string(),
    }
    .wait()
    .map(|_| ())
}

/// A plugin linked into this binary, which a delegation runs in-process when `CNI_PATH`
/// resolves its name to this very executable (see [`register_builtin`]).
pub type Builtin = &'static (dyn Plugin + Sync);

static BUILTINS: Mutex<Vec<(&'static str, Builtin)>> = Mutex::new(Vec::new());

/// Registers `plugin` as linked into this executable under `name` (a multicall binary that
/// is also `name`): a delegation to `name` whose `CNI_PATH` lookup finds the file this process
/// runs from (same device and inode as `/proc/self/exe`) then runs it in this process, on a
/// thread, instead of starting a second process. Its result, error JSON, stderr and effects
/// are those the child would have had; any other file of that name (a reference or a
/// third-party plugin, or a copy of ours) is executed as always.
pub fn register_builtin(name: &'static str, plugin: Builtin) {
    let mut b = BUILTINS.lock().unwrap_or_else(|e| e.into_inner());
    b.retain(|(n, _)| *n != name);
    b.push((name, plugin));
}

/// The registered plugin `name`, if `bin` (what `CNI_PATH` resolved it to) is this executable.
fn builtin(name: &str, bin: &Path) -> Option<(&'static str, Builtin)> {
    let found = BUILTINS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(n, _)| *n == name)
        .copied()?;
    let target = std::fs::metadata(bin).ok()?;
    let me = std::fs::metadata("/proc/self/exe").ok()?;
    (target.dev() == me.dev() && target.ino() == me.ino()).then_some(found)
}

/// A delegated plugin running while this one goes on with its own work. Dropped before it
/// was waited for (an early return, a panic unwinding), it is killed and reaped (in-process:
/// its thread joined), and an ADD's possible reservation is released by a DEL of the same
/// attachment: no process, thread or lease outlives the call.
pub struct Pending {
    run: Option<Running>,
    plugin_type: String,
    cmd: Command,
    bin: PathBuf,
    /// The config, for the DEL that releases what a dropped ADD may have reserved.
    stdin: Vec<u8>,
    /// The call's token, which the ADD was given and its undo names.
    token: String,
}

/// A delegated plugin: a child process, or the same plugin run in this process on a thread.
enum Running {
    Child(std::process::Child),
    Thread(std::thread::JoinHandle<(i32, Vec<u8>)>),
}

/// Starts `plugin_type` for `cmd` with the call's config and returns at once: the IPAM
/// plugin's process start and its work overlap with ours. [`Pending::wait`] collects it.
pub fn start(plugin_type: &str, cmd: Command, call: &Call) -> Result<Pending> {
    let found = find_plugin(plugin_type, &call.env.path)?;
    let (run, bin) = launch(plugin_type, &found, cmd, &call.stdin, &call.env.token, false)?;
    Ok(Pending {
        run: Some(run),
        plugin_type: plugin_type.to_string(),
        cmd,
        bin,
        stdin: if cmd == Command::Add {
            call.stdin.clone()
        } else {
            Vec::new()
        },
        token: call.env.token.clone(),
    })
}

/// What a delegation adds to the environment: `CNI_COMMAND`, and the call's token, as
/// [`TOKEN_ENV`] for an ADD or as [`UNDO_ENV`] for the DEL that undoes it.
struct Extra<'a> {
    cmd: Command,
    token: &'a str,
    undo: bool,
}

impl Extra<'_> {
    fn vars(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("CNI_COMMAND", Some(self.cmd.as_str())),
            (TOKEN_ENV, (self.cmd == Command::Add).then_some(self.token)),
            (UNDO_ENV, self.undo.then_some(self.token)),
        ]
    }
}

/// Starts `bin` (found for `plugin_type`) for `cmd`, in-process when it is this executable
/// and registered, giving it the call's `token` (see [`Extra`]); `undo`: a DEL that undoes a
/// failed ADD of this call. Returns it with the program that runs: `bin`, or the one a
/// registered plugin hands this config over to (see [`Plugin::exec_instead`]), which messages
/// then name.
fn launch(
    plugin_type: &str,
    bin: &Path,
    cmd: Command,
    stdin_bytes: &[u8],
    token: &str,
    undo: bool,
) -> Result<(Running, PathBuf)> {
    let extra = Extra { cmd, token, undo };
    let child = |prog: &Path| spawn(prog, &extra, stdin_bytes).map(|c| (Running::Child(c), prog.to_path_buf()));
    match builtin(plugin_type, bin) {
        Some((name, plugin)) => match plugin.exec_instead(stdin_bytes, &crate::env::process_var)? {
            Some(other) => child(&other),
            None => spawn_thread(name, plugin, bin, &extra, stdin_bytes).map(|t| (t, bin.to_path_buf())),
        },
        None => child(bin),
    }
}

/// Runs the registered `plugin` on a thread with the environment the child would get: this
/// process's, with the [`Extra`] variables set.
fn spawn_thread(name: &'static str, plugin: Builtin, bin: &Path, extra: &Extra, stdin_bytes: &[u8]) -> Result<Running> {
    let vars: Vec<(&'static str, Option<String>)> = extra
        .vars()
        .into_iter()
        .map(|(k, v)| (k, v.map(str::to_string)))
        .collect();
    let stdin = stdin_bytes.to_vec();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            crate::trace::set_lane(name);
            let get = |k: &str| -> Option<String> {
                match vars.iter().find(|(name, _)| *name == k) {
                    Some((_, v)) => v.clone(),
                    None => crate::env::process_var(k),
                }
            };
            let out = crate::skel::run_in_process(name, plugin, &get, stdin);
            crate::trace::step("exit");
            out
        })
        .map(Running::Thread)
        .map_err(|e| Error::io(format!("running IPAM plugin {} in-process", bin.display()), e))
}

/// Starts `bin` with the [`Extra`] variables set (and unset where they do not apply: ours, not
/// the runtime's, say what a call is).
fn spawn(bin: &std::path::Path, extra: &Extra, stdin_bytes: &[u8]) -> Result<std::process::Child> {
    let mut proc = Proc::new(bin);
    for (k, v) in extra.vars() {
        match v {
            Some(v) => proc.env(k, v),
            None => proc.env_remove(k),
        };
    }
    let mut child = proc
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

/// How a finished delegated plugin exited, and its stdout. In-process, the exit status is
/// the one its process would have had.
fn collect(run: Running, bin: &Path) -> Result<(std::process::ExitStatus, Vec<u8>)> {
    match run {
        Running::Child(child) => {
            let out = child
                .wait_with_output()
                .map_err(|e| Error::io(format!("waiting for IPAM plugin {}", bin.display()), e))?;
            Ok((out.status, out.stdout))
        }
        Running::Thread(t) => match t.join() {
            Ok((code, out)) => {
                use std::os::unix::process::ExitStatusExt;
                Ok((std::process::ExitStatus::from_raw((code & 0xff) << 8), out))
            }
            // `run_in_process` catches panics; a thread cannot end otherwise.
            Err(_) => Err(Error::internal(format!(
                "IPAM plugin {} (in-process) ended without a result",
                bin.display()
            ))),
        },
    }
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
        let run = self.run.take().expect("a pending plugin is finished once");
        let (status, stdout) = match collect(run, &self.bin) {
            Ok(o) => o,
            Err(e) => return Ended::Unexplained(e),
        };
        crate::trace::step(&format!("ipam {}", self.cmd.as_str()));
        if status.success() {
            return Ended::Succeeded(stdout);
        }
        match parse_error(&stdout) {
            Some(e) => Ended::Reported(e),
            None => Ended::Unexplained(
                Error::internal(format!(
                    "IPAM plugin \"{}\" failed ({status}) without an error JSON: {}",
                    self.plugin_type,
                    String::from_utf8_lossy(&stdout).trim()
                ))
                .with_source(Source::Exit(status)),
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
        let Some(run) = self.run.take() else {
            return;
        };
        match run {
            Running::Child(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            // A thread cannot be killed: it finishes (host-local's work is bounded, its lock
            // wait included) and is joined, so nothing of it runs on after the call.
            Running::Thread(t) => {
                let _ = t.join();
            }
        }
        if self.cmd != Command::Add {
            return;
        }
        // It may have reserved an address before it was killed.
        // The ADD failed (it was dropped): its undo DEL releases what it reserved, pointers
        // included.
        if let Err(e) = run_undo(&self.plugin_type, &self.bin, &self.stdin, &self.token) {
            crate::log!(
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
