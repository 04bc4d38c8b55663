//! Test bed of the integration tests: find the built plugin binaries, run them exactly as a
//! container runtime does, in private network namespaces that are always removed, with private
//! lease stores.
//!
//! ```no_run
//! use cni_tests::{bin, Cni, Netns, TempDir};
//! use serde_json::json;
//!
//! let data = TempDir::new("hl");
//! let host = Netns::new();          // the plugin's "host": never the machine's own namespace
//! let ctr = Netns::new();           // the container
//! let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "host-local",
//!                   "ipam": {"type": "host-local", "subnet": "10.1.0.0/24", "dataDir": data.path()}});
//! let out = Cni::new(bin("host-local"))
//!     .command("ADD")
//!     .container_id("c1")
//!     .netns(ctr.path())
//!     .host(&host)
//!     .config(&conf)
//!     .run();
//! let result = out.expect_ok();
//! assert_eq!(result["ips"][0]["address"], "10.1.0.2/24");
//! ```
//!
//! Rules for tests built on this: run as root (namespaces), create everything through these
//! helpers (unique names, removed on drop even when the test panics), and run plugins that
//! touch interfaces inside a private host namespace ([`Cni::host`]) so the machine's own
//! interfaces, addresses, routes and firewall are never touched.

pub mod hardening;
pub mod node;

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

pub mod etcd;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix><pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Whether we run as root (namespaces and most plugin calls need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this is a CI run (`CI` set and not empty/`false`/`0`), judged as the plugins'
/// own tests judge it ([`cni::env::ProcessFlags::ci`]).
pub fn in_ci() -> bool {
    cni::env::process_flags().ci
}

/// Says that the running test is skipped, and why, where a person sees it: past the test
/// harness's capture of its output, which shows a passing test's `eprintln!` never. In CI
/// ([`in_ci`]) the test fails instead.
#[track_caller]
pub fn skip_notice(why: &str) {
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    assert!(!in_ci(), "{test}: {why} (CI is set, so this fails instead of skipping)");
    cni::log!("\n*** SKIPPED {test}: {why} ***\n");
}

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory of the built binaries, in this order: `CNI_RS_BIN_DIR` or `CNI_BIN_DIR` if
/// set; the profile directory of the running test executable (`target/<profile>`, whatever
/// `CARGO_TARGET_DIR` or `--release` made it); `$CARGO_TARGET_DIR/debug`;
/// `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    for var in ["CNI_RS_BIN_DIR", "CNI_BIN_DIR"] {
        if let Some(d) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
    }
    // Test executables live in target/<profile>/deps.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile) = exe
            .parent()
            .and_then(|deps| (deps.file_name()? == "deps").then(|| deps.parent()).flatten())
        {
            return profile.to_path_buf();
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    target.join("debug")
}

/// The path of built binary `name` (e.g. `host-local`); panics with what to do when it is not
/// built.
#[track_caller]
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace` first (or set CNI_RS_BIN_DIR)",
        p.display()
    );
    p
}

/// The CNI versions our plugins speak (the spec's 0.1.0 to 1.1.0): what `VERSION` lists and
/// what an error JSON may carry as its `cniVersion`.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Where Debian's containernetworking-plugins installs the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// The reference plugin `name` (Debian's `containernetworking-plugins`) for differential
/// tests. When it is missing: in CI (env `CI`) the test fails; elsewhere this says so loudly on
/// stderr and returns `None`, and the test should return early.
#[track_caller]
pub fn reference_bin(name: &str) -> Option<PathBuf> {
    let p = Path::new(REFERENCE_DIR).join(name);
    if p.is_file() {
        return Some(p);
    }
    assert!(
        !in_ci(),
        "reference plugin {} is missing in CI: `apt-get install containernetworking-plugins` (make deps)",
        p.display()
    );
    skip_notice(&format!(
        "reference plugin {} is not installed (apt-get install containernetworking-plugins); \
         this differential test did not run",
        p.display()
    ));
    None
}

/// Runs a command; panics with its output when it fails; returns its stdout.
#[track_caller]
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of this test (`ip netns add cnit<pid>-<n>`), deleted on drop — also
/// when the test panics. Its loopback is up.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    #[track_caller]
    pub fn new() -> Netns {
        let name = unique_name("cnit");
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what `CNI_NETNS` holds.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `cmd` inside the namespace (`ip netns exec`), returning its output whatever its
    /// status.
    pub fn exec(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?} in {}: {e}", self.name))
    }

    /// `ip -n <name> args...`; panics on failure; returns stdout.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// The names of the links other than `lo`, in the kernel's order (with their kinds:
    /// [`node::links`]).
    #[track_caller]
    pub fn links(&self) -> Vec<String> {
        node::links(self).into_iter().map(|(name, _)| name).collect()
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether this kernel makes bridges with VLAN filtering (tried with `ip` in a namespace of
/// its own): some kernels are built without it and refuse with EOPNOTSUPP.
pub fn kernel_has_vlan_filtering() -> bool {
    let ns = Netns::new();
    ns.exec(&["ip", "link", "add", "vf0", "type", "bridge", "vlan_filtering", "1"])
        .status
        .success()
        && ns.ip(&["-d", "link", "show", "vf0"]).contains("vlan_filtering 1")
}

/// A private temporary directory (e.g. a lease store's `dataDir`), removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(&format!("cni-tests-{tag}-")));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What one plugin call gave.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Stdout parsed as JSON (`Null` when empty).
    pub stdout: Value,
    pub raw_stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The spec error's `code`, when the call failed with an error JSON.
    pub fn error_code(&self) -> Option<u64> {
        if self.success() {
            return None;
        }
        self.stdout.get("code").and_then(Value::as_u64)
    }

    /// The spec error's `msg`.
    pub fn error_msg(&self) -> String {
        self.stdout
            .get("msg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    /// The result; panics with the error and stderr when the call failed.
    #[track_caller]
    pub fn expect_ok(&self) -> Value {
        assert!(
            self.success(),
            "plugin failed (exit {:?}): {} (stderr: {})",
            self.code,
            self.raw_stdout.trim(),
            self.stderr.trim()
        );
        self.stdout.clone()
    }

    /// Asserts the call failed with error `code` (exit status 1 and an error JSON); returns
    /// the message.
    #[track_caller]
    pub fn expect_error(&self, code: u64) -> String {
        assert!(
            !self.success(),
            "plugin succeeded, expected error code {code}: {}",
            self.raw_stdout.trim()
        );
        assert_eq!(
            self.code,
            Some(1),
            "a failed call exits 1 (stdout {}, stderr {})",
            self.raw_stdout.trim(),
            self.stderr.trim()
        );
        assert_eq!(
            self.error_code(),
            Some(code),
            "error JSON {} (stderr: {})",
            self.raw_stdout.trim(),
            self.stderr.trim()
        );
        self.error_msg()
    }
}

/// One plugin call, built up and run as a runtime runs it: a clean environment with the
/// `CNI_*` variables, the network config on stdin, the result or error JSON on stdout.
///
/// Defaults: `CNI_CONTAINERID=ctr1`, `CNI_IFNAME=eth0`, `CNI_NETNS=/var/run/netns/none` (a
/// path that does not exist: fine for IPAM plugins; give a real one for others),
/// `CNI_PATH=<bin dir>:/usr/lib/cni`, no `CNI_ARGS`. `CNI_RS_TRACE` is passed on when set.
#[derive(Debug, Clone)]
pub struct Cni {
    bin: PathBuf,
    env: Vec<(String, Option<String>)>,
    stdin: Vec<u8>,
    host: Option<String>,
    via_ip_netns_exec: bool,
    wrapper: Vec<String>,
    own_group: bool,
    stderr: StderrTo,
}

/// Where a call's stderr goes ([`Cni::stderr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StderrTo {
    /// A pipe the test reads: [`Output::stderr`].
    #[default]
    Piped,
    /// A pipe whose read end is closed before the plugin starts: every write to stderr fails
    /// with EPIPE (as when the runtime stopped reading it).
    BrokenPipe,
    /// No descriptor 2 at all: closed between fork and exec.
    Closed,
}

impl Cni {
    pub fn new(bin: impl Into<PathBuf>) -> Cni {
        let mut c = Cni {
            bin: bin.into(),
            env: Vec::new(),
            stdin: Vec::new(),
            host: None,
            via_ip_netns_exec: false,
            wrapper: Vec::new(),
            own_group: false,
            stderr: StderrTo::Piped,
        };
        let cni_path = format!("{}:{REFERENCE_DIR}", bin_dir().display());
        c = c
            .env("CNI_CONTAINERID", "ctr1")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", "/var/run/netns/none")
            .env("CNI_PATH", &cni_path);
        c
    }

    /// The call a runtime makes of our plugin `plugin` (e.g. `bridge`) inside the host
    /// namespace `host`: `CNI_COMMAND=command`, `CNI_CONTAINERID=id`, `CNI_NETNS=netns` (left
    /// out when `None`), `conf` on stdin.
    pub fn call(plugin: &str, host: &Netns, command: &str, id: &str, netns: Option<&str>, conf: &Value) -> Cni {
        let c = Cni::new(bin(plugin))
            .command(command)
            .container_id(id)
            .host(host)
            .config(conf);
        match netns {
            Some(p) => c.netns(p),
            None => c.unset("CNI_NETNS"),
        }
    }

    /// `CNI_COMMAND`: ADD, DEL, CHECK, GC, STATUS, VERSION.
    pub fn command(self, cmd: &str) -> Cni {
        self.env("CNI_COMMAND", cmd)
    }

    pub fn container_id(self, id: &str) -> Cni {
        self.env("CNI_CONTAINERID", id)
    }

    pub fn ifname(self, ifname: &str) -> Cni {
        self.env("CNI_IFNAME", ifname)
    }

    pub fn netns(self, path: impl AsRef<str>) -> Cni {
        self.env("CNI_NETNS", path.as_ref())
    }

    /// `CNI_ARGS`, e.g. `IgnoreUnknown=1;IP=10.1.0.5`.
    pub fn args(self, args: &str) -> Cni {
        self.env("CNI_ARGS", args)
    }

    /// Sets any environment variable (later calls win).
    pub fn env(mut self, key: &str, value: &str) -> Cni {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), Some(value.to_string())));
        self
    }

    /// Leaves a variable out (e.g. to test a missing `CNI_NETNS`).
    pub fn unset(mut self, key: &str) -> Cni {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), None));
        self
    }

    /// The network config, sent on stdin.
    pub fn config(mut self, conf: &Value) -> Cni {
        self.stdin = conf.to_string().into_bytes();
        self
    }

    /// Raw stdin (e.g. invalid JSON).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cni {
        self.stdin = bytes.into();
        self
    }

    /// Runs the plugin inside `ns` (its "host" namespace), entering it with `setns` between
    /// fork and exec: fast, but `/sys` stays the caller's mount (use
    /// [`Cni::host_via_ip_netns_exec`] for plugins that read `/sys/class/net`).
    pub fn host(mut self, ns: &Netns) -> Cni {
        self.host = Some(ns.name().to_string());
        self.via_ip_netns_exec = false;
        self
    }

    /// Runs the plugin inside `ns` through `ip netns exec`, which also mounts that
    /// namespace's `/sys`.
    pub fn host_via_ip_netns_exec(mut self, ns: &Netns) -> Cni {
        self.host = Some(ns.name().to_string());
        self.via_ip_netns_exec = true;
        self
    }

    /// Runs the plugin through a wrapper command: `wrapper... <plugin>` (e.g. `unshare -m`
    /// with a shell that prepares mounts and ends in `exec "$@"`).
    pub fn wrapper(mut self, argv: &[&str]) -> Cni {
        self.wrapper = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Starts the plugin in a process group of its own, so that it and everything it starts
    /// (its IPAM plugin) can be killed together: [`Running::kill_group`].
    pub fn process_group(mut self) -> Cni {
        self.own_group = true;
        self
    }

    /// Where the plugin's stderr goes (default: a pipe the test reads).
    pub fn stderr(mut self, to: StderrTo) -> Cni {
        self.stderr = to;
        self
    }

    fn command_line(&self) -> (Command, Option<File>) {
        let mut argv: Vec<OsString> = Vec::new();
        if self.via_ip_netns_exec {
            if let Some(h) = &self.host {
                argv.extend(["ip", "netns", "exec", h].map(OsString::from));
            }
        }
        argv.extend(self.wrapper.iter().map(OsString::from));
        argv.push(self.bin.clone().into_os_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        if let Some(t) = std::env::var_os("CNI_RS_TRACE") {
            cmd.env("CNI_RS_TRACE", t);
        }
        for (k, v) in &self.env {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        match self.stderr {
            StderrTo::Piped => {
                cmd.stderr(Stdio::piped());
            }
            StderrTo::BrokenPipe => {
                cmd.stderr(broken_pipe());
            }
            StderrTo::Closed => {
                cmd.stderr(Stdio::null());
                // SAFETY: close(2) between fork and exec is async-signal-safe; fd 2 of the child
                // is its own.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::close(2);
                        Ok(())
                    });
                }
            }
        }
        if self.own_group {
            cmd.process_group(0);
        }
        let mut ns_file = None;
        if let (Some(h), false) = (&self.host, self.via_ip_netns_exec) {
            let f = File::open(format!("/run/netns/{h}")).unwrap_or_else(|e| panic!("opening netns {h}: {e}"));
            let fd = f.as_raw_fd();
            // SAFETY: between fork and exec we only call setns (async-signal-safe) on an fd
            // that stays open (the File lives until the child is spawned).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            ns_file = Some(f);
        }
        (cmd, ns_file)
    }

    /// Starts the plugin and writes its stdin; [`Running::wait`] collects the output. For
    /// many concurrent calls.
    pub fn spawn(&self) -> Running {
        let (mut cmd, ns_file) = self.command_line();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.bin.display()));
        drop(ns_file);
        let mut stdin = child.stdin.take().expect("piped stdin");
        // A plugin that exits early (e.g. VERSION) does not read stdin: ignore EPIPE.
        let _ = stdin.write_all(&self.stdin);
        drop(stdin);
        Running {
            child,
            own_group: self.own_group,
        }
    }

    /// Runs the plugin to completion.
    pub fn run(&self) -> Output {
        self.spawn().wait()
    }
}

/// The write end of a pipe whose read end is already closed: a write to it fails with EPIPE
/// (SIGPIPE for a process that does not ignore it), deterministically.
fn broken_pipe() -> Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just made by pipe2 and nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// One call in one line: plugin `bin`, `CNI_COMMAND=command`, the [`Cni`] defaults overridden
/// by `env` (e.g. `&[("CNI_CONTAINERID", "c1")]`), `conf` on stdin.
pub fn cni(bin: impl Into<PathBuf>, command: &str, env: &[(&str, &str)], conf: &Value) -> Output {
    let mut c = Cni::new(bin).command(command).config(conf);
    for (k, v) in env {
        c = c.env(k, v);
    }
    c.run()
}

/// A started plugin call.
#[derive(Debug)]
pub struct Running {
    child: Child,
    own_group: bool,
}

impl Running {
    /// Waits at most `timeout` for the call; a call still running then is killed and the test
    /// fails: a plugin must never hang.
    #[track_caller]
    pub fn wait_within(mut self, timeout: std::time::Duration) -> Output {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.child.try_wait().expect("polling the plugin").is_some() {
                return self.wait();
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the plugin hung: still running after {timeout:?}, killed");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// The plugin's pid (with [`Cni::process_group`] also the id of its process group).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The plugin's exit status if it has ended, without waiting ([`Child::try_wait`]).
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Sends SIGKILL to the call's process group: the plugin and every process it started.
    /// Only for a call started with [`Cni::process_group`].
    #[track_caller]
    pub fn kill_group(&self) {
        assert!(
            self.own_group,
            "kill_group needs a call started with Cni::process_group"
        );
        // SAFETY: kill(2) of the process group that this call's plugin leads.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
    }

    /// Waits for the call and gives its output as it is, unparsed (the stdout of a killed call
    /// may be anything) ([`Child::wait_with_output`]).
    pub fn wait_with_output(self) -> std::io::Result<std::process::Output> {
        self.child.wait_with_output()
    }

    pub fn wait(self) -> Output {
        let out = self.wait_with_output().expect("waiting for the plugin");
        let raw_stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stdout = if raw_stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw_stdout)
                .unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {raw_stdout}"))
        };
        Output {
            code: out.status.code(),
            stdout,
            raw_stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Waits until `cond` holds, polling, for at most `timeout`; panics naming `what` when it never
/// does. For what the kernel does asynchronously (a namespace's links go some time after the
/// namespace is deleted), never a fixed sleep.
#[track_caller]
pub fn eventually(timeout: std::time::Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = std::time::Duration::from_millis(1);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}

/// Merges `extra` into `base`: objects key by key, recursively; a `null` in `extra` removes
/// the key; anything else replaces what is there (arrays whole).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(slot) = b.get_mut(&k) {
                    merge(slot, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, e) => *b = e,
    }
}

/// `base` with `extra` merged in ([`merge`]).
pub fn merged(base: &Value, extra: Value) -> Value {
    let mut out = base.clone();
    merge(&mut out, extra);
    out
}

/// Fails the test listing every failure (of a table of cases run to the end), if any.
#[track_caller]
pub fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The global addresses of `dev` in `ns`, without prefix, IPv4 first.
pub fn global_addrs(ns: &Netns, dev: &str) -> Vec<String> {
    let out = ns.exec(&["ip", "-j", "addr", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut a: Vec<String> = v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["scope"] == "global")
                .filter_map(|i| i["local"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    a.sort_by_key(|s| s.contains(':'));
    a
}

/// A round of ADDs of one attachment at once (a runtime that retries while its first call
/// still runs), checked by [`concurrent_adds_of_one_attachment`].
pub struct SameAttachment<'a> {
    /// Names the round in messages.
    pub what: &'a str,
    pub host: &'a Netns,
    /// `bridge`, `macvlan` (one interface is checked) or `host-local`.
    pub plugin: &'a str,
    pub conf: &'a Value,
    /// The attachment's container id (its ifname is `eth0`).
    pub id: &'a str,
    /// How many ADDs at once.
    pub n: usize,
    /// How many leases (one per family) the attachment must hold.
    pub families: usize,
}

/// Runs `round.n` ADDs of the attachment into a new container at once and checks the outcome:
/// every losing ADD is code 103, one interface whose addresses are exactly the leases naming
/// the attachment (`leased(id)`: the store's, IPv4 first), one per family, every successful ADD
/// reporting them; then a DEL frees them and removes the interface.
pub fn concurrent_adds_of_one_attachment(round: &SameAttachment, leased: impl Fn(&str) -> Vec<String>) {
    let SameAttachment {
        what,
        host,
        plugin,
        conf,
        id,
        n,
        families,
    } = *round;
    let ctr = Netns::new();
    let calls: Vec<Running> = (0..n)
        .map(|_| Cni::call(plugin, host, "ADD", id, Some(&ctr.path()), conf).spawn())
        .collect();
    let outs: Vec<Output> = calls
        .into_iter()
        .map(|c| c.wait_within(std::time::Duration::from_secs(30)))
        .collect();
    for o in &outs {
        if !o.success() {
            assert_eq!(o.error_code(), Some(103), "{what}: a losing ADD: {}", o.error_msg());
        }
    }
    assert!(outs.iter().any(|o| o.success()), "{what}: no ADD succeeded");
    let held = leased(id);
    assert_eq!(
        held.len(),
        families,
        "{what}: one lease per family names the attachment: {held:?}"
    );
    if plugin != "host-local" {
        let links: Vec<String> = ctr.links().into_iter().filter(|l| l != "lo").collect();
        assert_eq!(links.len(), 1, "{what}: one interface: {links:?}");
        assert_eq!(
            global_addrs(&ctr, "eth0"),
            held,
            "{what}: the interface's addresses are leased to it"
        );
    }
    for o in outs.iter().filter(|o| o.success()) {
        let got: Vec<String> = o.expect_ok()["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .map(|i| {
                i["address"]
                    .as_str()
                    .unwrap_or_default()
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(got, held, "{what}: a successful ADD reported the leased addresses");
    }
    Cni::call(plugin, host, "DEL", id, Some(&ctr.path()), conf)
        .run()
        .expect_ok();
    assert!(leased(id).is_empty(), "{what}: DEL freed the leases");
    assert!(!ctr.links().iter().any(|l| l == "eth0"), "{what}: DEL removed eth0");
}

/// The regular files of `dir` whose names are IP addresses (a host-local lease store), sorted,
/// with their contents.
pub fn lease_files(dir: &Path) -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, String)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .map(|n| {
            let c = std::fs::read_to_string(dir.join(&n)).unwrap_or_default();
            (n, c)
        })
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_recursive() {
        let mut a = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge(&mut a, json!({"a": {"b": 5}, "d": [2], "e": true}));
        assert_eq!(a, json!({"a": {"b": 5, "c": 2}, "d": [2], "e": true}));
    }

    #[test]
    fn merge_removes_a_key_set_to_null() {
        let a = json!({"a": {"b": 1, "c": 2}, "d": 1});
        let b = merged(&a, json!({"a": {"b": null}, "d": null, "x": null}));
        assert_eq!(b, json!({"a": {"c": 2}}));
        assert_eq!(a["d"], 1, "merged leaves its base alone");
        assert_eq!(merged(&a, json!({"a": 5}))["a"], 5);
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
    }

    #[test]
    fn temp_dirs_are_removed() {
        let p = {
            let t = TempDir::new("t");
            std::fs::write(t.join("f"), "x").unwrap();
            t.path().to_path_buf()
        };
        assert!(!p.exists());
    }
}
