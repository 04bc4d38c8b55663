//! The entry point every plugin binary calls: read the call, dispatch the verb, print one
//! result or one error, and never let a panic reach the runtime.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::env::{Command, Env, Lookup};
use crate::error::{code, Error, Result};
use crate::netns::Netns;
use crate::trace;
use crate::types::{CniResult, NetConf};
use crate::version::{self, Version};

/// Configs larger than this are refused (code 6) instead of read into memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// One plugin invocation: the environment, the raw config and its common keys.
#[derive(Debug, Clone)]
pub struct Call {
    pub env: Env,
    pub stdin: Vec<u8>,
    pub conf: NetConf,
    pub version: Version,
    /// The container's network namespace, opened and checked before the plugin runs (for
    /// plugins that enter it): `None` without `CNI_NETNS`, or for a DEL whose namespace is
    /// gone.
    pub container_ns: Option<Arc<Netns>>,
}

impl Call {
    /// The config's `cniVersion`, as results must be printed in it.
    pub fn cni_version(&self) -> &str {
        if self.conf.cni_version.is_empty() {
            "0.1.0"
        } else {
            &self.conf.cni_version
        }
    }

    /// `CNI_NETNS`, which ADD and CHECK always have.
    pub fn netns(&self) -> Result<&str> {
        self.env
            .netns
            .as_deref()
            .ok_or_else(|| Error::invalid_env("CNI_NETNS is required"))
    }

    /// The container's network namespace, which ADD and CHECK always have.
    pub fn container_netns(&self) -> Result<&Netns> {
        self.netns()?;
        self.container_ns
            .as_deref()
            .ok_or_else(|| Error::internal("CNI_NETNS was not opened before the plugin ran"))
    }

    /// Opens and checks `CNI_NETNS` for ADD, CHECK and DEL ([`Netns::open_container`]):
    /// before anything else is done, so that a path that is not a network namespace, or is
    /// the plugin's own, fails the call at once with nothing changed. For DEL a namespace that
    /// does not exist any more is no error: its links went with it.
    pub fn open_container_ns(&mut self) -> Result<()> {
        let Some(path) = self.env.netns.as_deref() else {
            return Ok(());
        };
        if !matches!(self.env.command, Command::Add | Command::Check | Command::Del) {
            return Ok(());
        }
        match Netns::open_container(path) {
            Ok(ns) => self.container_ns = Some(Arc::new(ns)),
            Err(e) if e.is(code::UNKNOWN_CONTAINER) && self.env.command == Command::Del => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// What a plugin implements; the skeleton does the rest.
pub trait Plugin {
    /// Whether the plugin works in the container's network namespace (`CNI_NETNS`), which the
    /// skeleton then opens and checks first. IPAM plugins that ignore it say no.
    fn enters_netns(&self) -> bool {
        true
    }
    /// Another program that serves this call in place of this one (given the config on stdin
    /// and the environment `get`): the skeleton executes it instead of running the plugin,
    /// with the same arguments, environment and config ([`run`]: in place of this process;
    /// a delegation that would run the plugin in-process starts it as the child instead).
    fn exec_instead(&self, stdin: &[u8], get: &Lookup<'_>) -> Result<Option<PathBuf>> {
        let _ = (stdin, get);
        Ok(None)
    }
    fn add(&self, call: &Call) -> Result<CniResult>;
    fn del(&self, call: &Call) -> Result<()>;
    fn check(&self, call: &Call) -> Result<()>;
    fn gc(&self, call: &Call) -> Result<()>;
    fn status(&self, call: &Call) -> Result<()>;
}

/// Runs the plugin for this process and exits with its status.
pub fn run(name: &str, plugin: &dyn Plugin) -> ! {
    trace::start();
    // Panics become a code-100 error below; keep the default report off stdout (it goes to
    // stderr anyway) but short. The report never panics itself (a panic in the hook aborts the
    // process: no error JSON, the undo of the ADD cut short), whatever stderr is.
    std::panic::set_hook(Box::new(|info| {
        crate::log!("panic: {info}");
    }));
    let (code, out) = invoke(name, plugin, &crate::env::process_var, &mut read_stdin, true);
    if let Some(out) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&out);
        let _ = stdout.flush();
    }
    trace::report();
    std::process::exit(code)
}

/// Runs the plugin in this process as if it were its own process with the environment `get`
/// and `stdin` on its standard input: returns the exit status and the bytes it would print on
/// stdout, and prints on stderr what it would print there (a panic is the same code-100 error
/// JSON). How a plugin delegates to a plugin that is linked into its own binary.
pub fn run_in_process(name: &str, plugin: &dyn Plugin, get: &Lookup<'_>, stdin: Vec<u8>) -> (i32, Vec<u8>) {
    trace::start();
    let mut stdin = Some(stdin);
    let mut read = || {
        let buf = stdin.take().unwrap_or_default();
        if buf.len() as u64 > MAX_CONFIG_BYTES {
            return Err(Error::decode(format!(
                "network config on stdin is larger than {MAX_CONFIG_BYTES} bytes"
            )));
        }
        Ok(buf)
    };
    let (code, out) = invoke(name, plugin, get, &mut read, false);
    (code, out.unwrap_or_default())
}

/// One call, panics caught: its exit status and its stdout (a result or an error JSON).
/// `own_process`: the plugin is this process, which [`Plugin::exec_instead`] may replace.
fn invoke(
    name: &str,
    plugin: &dyn Plugin,
    get: &Lookup<'_>,
    read: &mut dyn FnMut() -> Result<Vec<u8>>,
    own_process: bool,
) -> (i32, Option<Vec<u8>>) {
    let mut version_for_errors = version::CURRENT.to_string();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch(name, plugin, get, read, own_process, &mut version_for_errors)
    }));
    let outcome = match outcome {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::internal(format!("internal error in {name}: {msg}")))
        }
    };
    match outcome {
        Ok(Some(out)) => (0, Some(json_line(&out))),
        Ok(None) => (0, None),
        Err(e) => {
            crate::log!("{name}: error {}: {e}", e.code());
            (1, Some(json_line(&e.to_json(&version_for_errors))))
        }
    }
}

/// Replaces this process by `bin` with this process's arguments and environment, and `stdin`
/// (already read from the real one) as its standard input, or the real one with `None`: the
/// hand-over of [`Plugin::exec_instead`]. Returns only on failure.
pub fn exec_in_place(bin: &Path, stdin: Option<&[u8]>) -> Error {
    use std::os::unix::process::CommandExt;
    let failed = |e: std::io::Error| Error::io(format!("running {}", bin.display()), e);
    let mut cmd = std::process::Command::new(bin);
    cmd.args(std::env::args_os().skip(1));
    if let Some(bytes) = stdin {
        match memfd_with(bytes) {
            Ok(f) => cmd.stdin(f),
            Err(e) => return failed(e),
        };
    }
    failed(cmd.exec())
}

/// An anonymous file holding `bytes`, positioned at its start.
fn memfd_with(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    use std::io::Seek;
    use std::os::fd::FromRawFd;
    // SAFETY: the name is NUL-terminated and outlives the call.
    let fd = unsafe { libc::memfd_create(c"cni-config".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f)
}

fn json_line(v: &serde_json::Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("reading the network config from stdin", e))?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::decode(format!(
            "network config on stdin is larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    Ok(buf)
}

fn dispatch(
    name: &str,
    plugin: &dyn Plugin,
    get: &Lookup<'_>,
    read: &mut dyn FnMut() -> Result<Vec<u8>>,
    own_process: bool,
    version_for_errors: &mut String,
) -> Result<Option<serde_json::Value>> {
    let Some(cmd) = get("CNI_COMMAND") else {
        crate::log!(
            "CNI {name} plugin {}\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            version::SUPPORTED.join(", ")
        );
        return Ok(None);
    };
    let command = Command::parse(&cmd)?;
    if command == Command::Version {
        return Ok(Some(version::version_json(version::CURRENT)));
    }
    let env = Env::from_lookup(command, get)?;
    let stdin = read()?;
    trace::step("read stdin");
    if own_process {
        if let Some(other) = plugin.exec_instead(&stdin, get)? {
            return Err(exec_in_place(&other, Some(&stdin)));
        }
    }
    let mut call = parse_call_for(env, stdin, version_for_errors)?;
    trace::step("parse config");
    if plugin.enters_netns() {
        call.open_container_ns()?;
        trace::step("open netns");
    }
    match command {
        Command::Add => {
            let r = plugin.add(&call)?;
            Ok(Some(r.to_json(call.cni_version())))
        }
        Command::Del => plugin.del(&call).map(|_| None),
        Command::Check => plugin.check(&call).map(|_| None),
        Command::Gc => plugin.gc(&call).map(|_| None),
        Command::Status => plugin.status(&call).map(|_| None),
        Command::Version => unreachable!("handled above"),
    }
}

/// Decodes the common keys of the config and checks the verb against its version. DEL and GC
/// read only what their teardown needs ([`crate::teardown`]).
pub fn parse_call(env: Env, stdin: Vec<u8>) -> Result<Call> {
    parse_call_for(env, stdin, &mut String::new())
}

/// The call the skeleton makes of `stdin` for `command` in the environment a runtime gives
/// (container `c1`, `CNI_NETNS` `/run/netns/x`, `eth0`, `CNI_PATH` `/opt/cni/bin`, `CNI_ARGS`
/// `args`): for the config tests of the plugins and for fuzzing. Nothing is opened.
pub fn test_call(command: Command, stdin: &[u8], args: &str) -> Result<Call> {
    let env = Env::from_lookup(command, |k| {
        Some(
            match k {
                "CNI_CONTAINERID" => "c1",
                "CNI_NETNS" => "/run/netns/x",
                "CNI_IFNAME" => "eth0",
                "CNI_PATH" => "/opt/cni/bin",
                "CNI_ARGS" => args,
                _ => return None,
            }
            .to_string(),
        )
    })?;
    parse_call(env, stdin.to_vec())
}

/// [`parse_call`], setting `version_for_errors` to the config's version once it is read (the
/// version an error is printed in).
fn parse_call_for(env: Env, stdin: Vec<u8>, version_for_errors: &mut String) -> Result<Call> {
    if stdin.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::decode("no network config on stdin"));
    }
    let conf: NetConf = match env.command {
        Command::Del => NetConf::decode_for_teardown(&stdin)?,
        Command::Gc => NetConf::decode_for_gc(&stdin)?,
        _ => crate::types::decode(&stdin)?,
    };
    let version = Version::of_config(&conf.cni_version)?;
    // Errors are printed in the config's version: 0.1.0 when it names none.
    *version_for_errors = version.to_string();
    let need = match env.command {
        Command::Check => Some("0.4.0"),
        Command::Gc | Command::Status => Some("1.1.0"),
        _ => None,
    };
    if let Some(need) = need {
        if !version.at_least(need) {
            return Err(Error::incompatible_version(format!(
                "config version \"{}\" does not allow {}: it needs cniVersion {need} or later",
                conf.cni_version,
                env.command.as_str()
            )));
        }
    }
    if !conf.name.is_empty() {
        crate::env::check_network_name(&conf.name)?;
    }
    Ok(Call {
        env,
        stdin,
        conf,
        version,
        container_ns: None,
    })
}
