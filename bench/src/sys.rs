//! The machinery under the benchmark: private network namespaces that are always removed,
//! signal handling, and running one child process with its wall time, CPU time and peak RSS.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub type Res<T> = Result<T, String>;

/// Every name this run creates (netns files, temp dirs) starts with this and the pid.
pub const PREFIX: &str = "cnib";

// ---------------------------------------------------------------------------------------------
// Signals: a flag the loops check; blocking waits are interrupted (no SA_RESTART).

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    SIGNAL.store(sig, Ordering::SeqCst);
}

pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a plain sigaction struct, zeroed then filled; the handler only stores atomics.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The signal that stopped the run, if any.
pub fn stop_signal() -> Option<i32> {
    STOP.load(Ordering::SeqCst).then(|| SIGNAL.load(Ordering::SeqCst))
}

pub fn check_stop() -> Res<()> {
    match stop_signal() {
        Some(s) => Err(format!("interrupted by signal {s}")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// What to remove at the end, whatever happens.

static NETNS_CREATED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static DIRS_CREATED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn register_dir(p: &Path) {
    lock(&DIRS_CREATED).push(p.to_path_buf());
}

fn remove_netns_file(p: &Path) {
    if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2 on a path we own; a path that is not a mount point gives EINVAL.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_file(p);
}

/// Removes every namespace and directory this run made. Safe to call more than once.
pub fn cleanup() {
    // Leave the private namespaces first, so that nothing of ours keeps them alive.
    if let Some(root) = ROOT_NS.get() {
        let _ = enter_fd(root.as_raw_fd());
    }
    let nss: Vec<PathBuf> = lock(&NETNS_CREATED).drain(..).collect();
    for p in nss.iter().rev() {
        remove_netns_file(p);
    }
    let dirs: Vec<PathBuf> = lock(&DIRS_CREATED).drain(..).collect();
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Runs [`cleanup`] when dropped (normal return, error return or panic).
pub struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup();
    }
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `cnib<pid>-...` → pid.
fn pid_of_name(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Removes what an earlier run killed with SIGKILL left behind: namespaces and temp dirs
/// named after a process that no longer exists.
pub fn remove_stale(temp: &Path) -> usize {
    let mut n = 0;
    let me = std::process::id() as i32;
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = pid_of_name(&name) {
                if pid != me && !pid_alive(pid) {
                    remove_netns_file(&e.path());
                    n += 1;
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(temp) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = pid_of_name(&name) {
                if pid != me && !pid_alive(pid) && e.path().is_dir() {
                    let _ = std::fs::remove_dir_all(e.path());
                    n += 1;
                }
            }
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Network namespaces.

static ROOT_NS: std::sync::OnceLock<File> = std::sync::OnceLock::new();

/// Remembers the namespace the benchmark started in, to come back to it.
pub fn remember_root_ns() -> Res<()> {
    let f = File::open("/proc/thread-self/ns/net").map_err(|e| format!("opening own netns: {e}"))?;
    let _ = ROOT_NS.set(f);
    Ok(())
}

fn enter_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns on a netns fd; it changes the namespace of this thread only.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A named network namespace (`/run/netns/<name>`), removed at [`cleanup`].
pub struct Ns {
    pub name: String,
    pub path: PathBuf,
    file: File,
}

impl Ns {
    /// Creates the namespaces `names` with one `ip -batch` process.
    pub fn create_many(names: &[String]) -> Res<Vec<Ns>> {
        let mut batch = String::new();
        for n in names {
            let p = PathBuf::from("/run/netns").join(n);
            if p.exists() {
                return Err(format!("netns {n} already exists"));
            }
            lock(&NETNS_CREATED).push(p);
            batch.push_str(&format!("netns add {n}\n"));
        }
        ip_batch(&batch)?;
        names
            .iter()
            .map(|n| {
                let path = PathBuf::from("/run/netns").join(n);
                let file = File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
                Ok(Ns {
                    name: n.clone(),
                    path,
                    file,
                })
            })
            .collect()
    }

    /// Moves the calling thread into this namespace: children spawned from it start there.
    pub fn enter(&self) -> Res<()> {
        enter_fd(self.file.as_raw_fd()).map_err(|e| format!("entering netns {}: {e}", self.name))
    }
}

/// Moves the calling thread back to the namespace the benchmark started in.
pub fn enter_root() -> Res<()> {
    let root = ROOT_NS.get().ok_or("root netns not remembered")?;
    enter_fd(root.as_raw_fd()).map_err(|e| format!("entering the original netns: {e}"))
}

/// Runs `ip -batch -` (in the calling thread's namespace) with `batch` on stdin.
pub fn ip_batch(batch: &str) -> Res<()> {
    let mut c = Command::new("ip");
    c.args(["-batch", "-"]);
    let out = run(&mut c, batch.as_bytes()).map_err(|e| format!("running ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip -batch failed ({}): {}\nbatch:\n{batch}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One child process, measured.

/// A finished child: what it printed and what it cost.
#[derive(Debug, Clone)]
pub struct Out {
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// From just before spawn to the child reaped.
    pub wall: Duration,
    /// User + system time of the child and of the children it waited for.
    pub cpu: Duration,
    /// Peak RSS (KiB) of the child and of the children it waited for (the largest of them).
    pub maxrss_kib: u64,
}

/// A started child.
pub struct Running {
    child: Child,
    start: Instant,
}

/// Starts `cmd` with `stdin` written and closed; stdout and stderr are collected by [`finish`].
pub fn start(cmd: &mut Command, stdin: &[u8]) -> io::Result<Running> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    if let Some(mut si) = child.stdin.take() {
        // A child that exits without reading gives EPIPE: its exit status tells more.
        let _ = si.write_all(stdin);
    }
    Ok(Running { child, start })
}

/// Reads stdout and stderr to their ends (with poll, so neither can fill up and block the
/// child), then reaps the child with wait4 for its rusage.
pub fn finish(mut r: Running) -> io::Result<Out> {
    let mut so = r.child.stdout.take();
    let mut se = r.child.stderr.take();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut buf = [0u8; 8192];
    while so.is_some() || se.is_some() {
        let mut fds = Vec::with_capacity(2);
        if let Some(f) = &so {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(f) = &se {
            fds.push(libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for pfd in fds.iter().filter(|p| p.revents != 0) {
            // SAFETY: reading into our buffer from a pipe fd we own.
            let got = unsafe { libc::read(pfd.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
            let is_out = so.as_ref().is_some_and(|f| f.as_raw_fd() == pfd.fd);
            if got == 0 {
                if is_out {
                    so = None;
                } else {
                    se = None;
                }
            } else if is_out {
                stdout.extend_from_slice(&buf[..got as usize]);
            } else {
                stderr.extend_from_slice(&buf[..got as usize]);
            }
        }
    }
    let pid = r.child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child; status and rusage point to live locals.
        let w = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if w == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let wall = r.start.elapsed();
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok(Out {
        pid: pid as u32,
        status: ExitStatus::from_raw(status),
        stdout,
        stderr,
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        maxrss_kib: ru.ru_maxrss as u64,
    })
}

/// Runs `cmd` to its end.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> io::Result<Out> {
    finish(start(cmd, stdin)?)
}

// ---------------------------------------------------------------------------------------------
// Small facts about the machine.

pub fn cmd_output(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn ncpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

/// The file system type of the mount holding `p` (from /proc/self/mounts, longest prefix).
pub fn fs_type(p: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown".into();
    };
    let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let mut best: Option<(usize, String)> = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        if p.starts_with(f[1]) && best.as_ref().is_none_or(|(n, _)| f[1].len() >= *n) {
            best = Some((f[1].len(), f[2].to_string()));
        }
    }
    best.map(|b| b.1).unwrap_or_else(|| "unknown".into())
}

/// Runs `cmd` to its end one instruction at a time (ptrace single-step) and counts the
/// instructions it executes and the `cpuid`s among them (opcode `0f a2`). Deterministic: what
/// a program's start-up does, independent of how busy the machine is.
#[cfg(target_arch = "x86_64")]
pub fn count_instructions(cmd: &mut Command) -> io::Result<(u64, u64)> {
    use std::os::unix::process::CommandExt;
    // SAFETY: only ptrace(PTRACE_TRACEME) (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let wait = || -> io::Result<i32> {
        let mut st = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut st, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    };
    // The stop at exec.
    let mut st = wait()?;
    let (mut n, mut cpuid) = (0u64, 0u64);
    while libc::WIFSTOPPED(st) {
        // SAFETY: the tracee is stopped; the register block and the peeked word are plain data.
        unsafe {
            let mut regs: libc::user_regs_struct = std::mem::zeroed();
            if libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs as *mut _) == 0 {
                *libc::__errno_location() = 0;
                let word = libc::ptrace(libc::PTRACE_PEEKTEXT, pid, regs.rip as *mut libc::c_void, 0);
                if *libc::__errno_location() == 0 && word & 0xffff == 0xa20f {
                    cpuid += 1;
                }
            }
            n += 1;
            if libc::ptrace(libc::PTRACE_SINGLESTEP, pid, 0, 0) != 0 {
                let e = io::Error::last_os_error();
                libc::kill(pid, libc::SIGKILL);
                let _ = wait();
                return Err(e);
            }
        }
        st = wait()?;
    }
    Ok((n, cpuid))
}
