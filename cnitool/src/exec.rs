//! `cnitool exec`: one command in a network namespace of its own, attached to one or more
//! networks, and everything removed again when it ends, whatever way it ends.
//!
//! 1. The termination signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are blocked first: from
//!    then on they are only taken with `sigtimedwait`, so none interrupts an ADD or the
//!    teardown. Plugins run in process groups of their own (a Ctrl-C at the terminal does
//!    not kill one half-way).
//! 2. Attachments of these networks whose `cnitool exec` was killed are cleaned up.
//! 3. A new namespace is made (as `ip netns add`: `<dir>/cnitool-<pid>-<n>`, dir
//!    `/run/netns` unless `CNITOOL_NETNS_DIR`), unless `--netns PATH` names one.
//! 4. Each network is ADDed (interfaces `eth0`, `eth1`, ... unless `--ifname`). Before its ADD
//!    the attachment is recorded in the cache with this process as its owner, so that a
//!    SIGKILLed exec is found by `cnitool gc --stale` (or by the next exec of the network).
//!    A failed ADD is DELed at once.
//! 5. The command runs in the namespace (entered between fork and exec) as the calling user
//!    (see [`RunAs`]: under sudo the user who ran sudo, otherwise cnitool's own), with
//!    cnitool's environment, working directory, terminal and process group, plus:
//!    `CNI_RESULT_IP` (the first address of the first network, without its prefix length),
//!    `CNI_RESULT` (the first network's result JSON), `CNI_RESULTS_FILE` (a JSON file:
//!    `[{"network", "ifname", "containerId", "result"}, ...]`), `CNITOOL_NETNS` (the path).
//! 6. A termination signal sent to cnitool by a process is passed on to the command (one from
//!    the terminal reaches it directly, as it is in the same process group).
//! 7. When the command ends: every network DELed in reverse, the namespace removed (not with
//!    `--keep` or `--netns`), and cnitool exits with the command's status (128 + the signal's
//!    number when a signal ended it). A termination signal during the ADDs skips the command
//!    and tears down at once (exit 128 + the signal).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use cni_client::conf::NetworkConfigList;
use cni_client::{goutil, CniConfig, Owner, RuntimeConf};

use crate::{fail, nsfile, parse_cap_args, parse_cni_args, Ctx, Fail, Res};

const HELP: &str = "\
usage: cnitool exec NETWORK [NET-OPTIONS] [NETWORK [NET-OPTIONS]]... [--keep | --netns PATH]
                    [-- COMMAND [ARG]...]

Runs COMMAND in a new network namespace attached to each NETWORK (interfaces eth0, eth1, ...),
waits for it, DELs every network in reverse and removes the namespace, also when the command
fails, on Ctrl-C and on SIGTERM (passed on to the command first). The exit status is the
command's. The options after a NETWORK apply to that network:

  --ip ADDR       a static address (repeatable): the `ips` capability when a plugin of the
                  network declares it, else CNI_ARGS IP=ADDR[,ADDR]
  --mac MAC       the container MAC: the `mac` capability, else CNI_ARGS MAC=
  --ifname NAME   the interface name (default ethN, N the network's position)
  --args K=V      an extra CNI_ARGS pair (repeatable)

  --keep          leave the namespace and its attachments when the command ends, and print
                  the namespace's path (on stdout when there is no COMMAND); remove them later
                  with `cnitool del NETWORK PATH` and `ip netns del NAME`
  --netns PATH    use an existing namespace instead (left in place)

The command runs as the calling user: under sudo (SUDO_UID set, cnitool running as root) as
the user who ran sudo, with their groups; otherwise as cnitool's user (`sudo env -u SUDO_UID
cnitool exec ...` keeps root). Environment, working directory and terminal are cnitool's.
The command gets CNI_RESULT_IP, CNI_RESULT, CNI_RESULTS_FILE and CNITOOL_NETNS (see README).
A killed exec (SIGKILL) leaves attachments that `cnitool gc --stale NETWORK` (or the next
`cnitool exec` of that network) removes, with the namespace.
";

#[derive(Debug, Default)]
struct NetSpec {
    name: String,
    ips: Vec<String>,
    mac: Option<String>,
    ifname: Option<String>,
    args: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Opts {
    nets: Vec<NetSpec>,
    keep: bool,
    netns: Option<String>,
    command: Vec<String>,
}

fn parse(args: &[String]) -> Res<Opts> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| -> Res<String> {
            it.next()
                .cloned()
                .ok_or_else(|| Fail(format!("exec: {a} needs {what}")))
        };
        match a.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--" => {
                o.command = it.cloned().collect();
                break;
            }
            "--keep" => o.keep = true,
            "--netns" => o.netns = Some(value("a namespace path")?),
            "--ip" | "--mac" | "--ifname" | "--args" => {
                let v = value("a value")?;
                let Some(net) = o.nets.last_mut() else {
                    return fail(format!("exec: {a} must follow the NETWORK it is for"));
                };
                match a.as_str() {
                    "--ip" => net.ips.push(v),
                    "--mac" => net.mac = Some(v),
                    "--ifname" => net.ifname = Some(v),
                    _ => net
                        .args
                        .extend(parse_cni_args(&v).map_err(|Fail(m)| Fail(format!("exec: --args: {m}")))?),
                }
            }
            s if s.starts_with('-') => return fail(format!("exec: unknown option {s} (see cnitool exec --help)")),
            _ => o.nets.push(NetSpec {
                name: a.clone(),
                ..Default::default()
            }),
        }
    }
    if o.nets.is_empty() {
        return fail("exec: no NETWORK given (see cnitool exec --help)");
    }
    if o.command.is_empty() && !o.keep {
        return fail("exec: no COMMAND given after `--` (see cnitool exec --help)");
    }
    if o.keep && o.netns.is_some() {
        return fail("exec: --keep and --netns exclude each other (a namespace given is always kept)");
    }
    Ok(o)
}

/// The termination signals cnitool takes with `sigtimedwait` (and SIGCHLD).
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset fill a set we own.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGCHLD] {
            libc::sigaddset(&mut s, sig);
        }
        s
    }
}

/// Waits at most `ms` for one of the set's signals: `(signal, sent by a process)`.
fn wait_signal(set: &libc::sigset_t, ms: i64) -> Option<(i32, bool)> {
    let ts = libc::timespec {
        tv_sec: ms / 1000,
        tv_nsec: (ms % 1000) * 1_000_000,
    };
    // SAFETY: zeroed siginfo is a valid out-parameter; the set and timespec are valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let sig = unsafe { libc::sigtimedwait(set, &mut info, &ts) };
    // si_code <= 0: sent by kill(2)/sigqueue/tgkill (a process), not by the kernel or the tty.
    (sig > 0).then_some((sig, info.si_code <= 0))
}

/// A termination signal already pending (taken), if any.
fn pending_termination(set: &libc::sigset_t) -> Option<i32> {
    while let Some((sig, _)) = wait_signal(set, 0) {
        if sig != libc::SIGCHLD {
            return Some(sig);
        }
    }
    None
}

/// The user the command runs as when it is not cnitool's own: under sudo (`SUDO_UID` set and
/// cnitool running as root) the user who ran sudo, with `SUDO_GID` (or their passwd entry's
/// group) and their supplementary groups (`getgrouplist`), all set in the child between fork
/// and exec, after it entered the namespace. `SUDO_UID=0` (sudo from root) keeps root; so does
/// an unset `SUDO_UID` (`sudo env -u SUDO_UID cnitool exec ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// The user's name and primary group from the passwd database (None: no entry).
fn passwd_entry(uid: libc::uid_t) -> Option<(std::ffi::CString, libc::gid_t)> {
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter; the buffer outlives the call, and the
    // name is copied out of it before it goes.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        let r = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut res);
        if r != 0 || res.is_null() || pw.pw_name.is_null() {
            return None;
        }
        Some((std::ffi::CStr::from_ptr(pw.pw_name).to_owned(), pw.pw_gid))
    }
}

/// The supplementary groups of user `name` with primary group `gid` (`getgrouplist`).
fn group_list(name: &std::ffi::CStr, gid: libc::gid_t) -> Vec<libc::gid_t> {
    let mut n: libc::c_int = 32;
    for _ in 0..8 {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let before = n;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at most that many
        // and sets `n` to the count (or to the size needed when it returns -1).
        let r = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        n = n.max(before * 2);
    }
    vec![gid]
}

impl RunAs {
    /// From the environment: `Ok(None)` keeps cnitool's user.
    pub fn from_env() -> Res<Option<RunAs>> {
        let Some(v) = std::env::var_os("SUDO_UID").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Not root (e.g. `sudo -u someone`): there is no one else to become.
            return Ok(None);
        }
        let v = v.to_string_lossy();
        let uid: libc::uid_t = v
            .parse()
            .map_err(|_| Fail(format!("exec: SUDO_UID=\"{}\" is not a user id", v.escape_debug())))?;
        if uid == 0 {
            return Ok(None);
        }
        let pw = passwd_entry(uid);
        let gid = match std::env::var("SUDO_GID").ok().filter(|g| !g.is_empty()) {
            Some(g) => g
                .parse()
                .map_err(|_| Fail(format!("exec: SUDO_GID=\"{}\" is not a group id", g.escape_debug())))?,
            None => match &pw {
                Some((_, gid)) => *gid,
                None => {
                    return fail(format!(
                        "exec: SUDO_UID={uid} without SUDO_GID, and no passwd entry for it: which group to run the command as?"
                    ))
                }
            },
        };
        let mut groups = match &pw {
            Some((name, _)) => group_list(name, gid),
            None => vec![gid],
        };
        if !groups.contains(&gid) {
            groups.insert(0, gid);
        }
        Ok(Some(RunAs { uid, gid, groups }))
    }
}

/// One network attached (for the teardown).
struct Attached {
    list: NetworkConfigList,
    rt: RuntimeConf,
    result: Option<Value>,
}

/// The runtime conf of network `spec` (position `i`): `--ip`/`--mac` as capabilities when a
/// plugin declares them, else as `CNI_ARGS`.
fn runtime_for(
    spec: &NetSpec,
    i: usize,
    list: &NetworkConfigList,
    netns: &str,
    base_args: &[(String, String)],
    base_caps: &Option<Map<String, Value>>,
    owner: &Owner,
) -> RuntimeConf {
    let declares = |cap: &str| {
        list.plugins
            .iter()
            .any(|p| p.capabilities.get(cap).copied().unwrap_or(false))
    };
    let mut args: Vec<(String, String)> = base_args.to_vec();
    args.extend(spec.args.iter().cloned());
    let mut caps = base_caps.clone().unwrap_or_default();
    let mut via_args = false;
    if !spec.ips.is_empty() {
        if declares("ips") {
            caps.insert("ips".into(), json!(spec.ips));
        } else {
            args.retain(|(k, _)| k != "IP");
            args.push(("IP".into(), spec.ips.join(",")));
            via_args = true;
        }
    }
    if let Some(mac) = &spec.mac {
        if declares("mac") {
            caps.insert("mac".into(), json!(mac));
        } else {
            args.retain(|(k, _)| k != "MAC");
            args.push(("MAC".into(), mac.clone()));
            via_args = true;
        }
    }
    // Runtimes send IgnoreUnknown with keys that only some plugins of a chain know.
    if via_args && !args.iter().any(|(k, _)| k == "IgnoreUnknown") {
        args.insert(0, ("IgnoreUnknown".into(), "1".into()));
    }
    RuntimeConf {
        container_id: goutil::cnitool_container_id(netns),
        netns: netns.to_string(),
        ifname: spec.ifname.clone().unwrap_or_else(|| format!("eth{i}")),
        args,
        capability_args: (!caps.is_empty()).then_some(caps),
        owner: Some(owner.clone()),
    }
}

fn first_ip(result: &Value) -> Option<String> {
    let addr = result.get("ips")?.as_array()?.first()?.get("address")?.as_str()?;
    Some(addr.split('/').next().unwrap_or(addr).to_string())
}

/// DELs every attachment in reverse (each failure reported, the rest still done).
fn teardown(cni: &CniConfig, attached: &mut Vec<Attached>) -> bool {
    let mut ok = true;
    while let Some(a) = attached.pop() {
        if let Err(e) = cni.del_network_list(&a.list, &a.rt) {
            eprintln!("cnitool: exec: del {} ({}): {e}", a.list.name, a.rt.ifname);
            ok = false;
        }
    }
    ok
}

/// The cached attachments of `list` whose exec owner is gone: DELed, their namespaces removed.
fn cleanup_dead_owners(cni: &CniConfig, list: &NetworkConfigList) {
    let Ok(atts) = cni.cache.attachments(Some(&list.name)) else {
        return;
    };
    for att in atts {
        let Some(o) = &att.info.owner else { continue };
        if cni_client::process_start_time(o.pid) == Some(o.start_time) {
            continue;
        }
        let rt = cni_client::stale_runtime(&att);
        match cni.del_network_list(list, &rt) {
            Ok(()) => {
                if o.owns_netns {
                    nsfile::remove(&att.info.netns);
                }
                eprintln!(
                    "cnitool: exec: removed attachment {} {} of network {} left by a killed exec (pid {})",
                    rt.container_id, rt.ifname, list.name, o.pid
                );
            }
            Err(e) => eprintln!("cnitool: exec: cleaning up after killed exec {}: {e}", o.pid),
        }
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub fn main(ctx: &Ctx, args: &[String]) -> Res<i32> {
    let o = parse(args)?;
    let run_as = RunAs::from_env()?;
    let set = signal_set();
    // SAFETY: blocks the set in this (still single-threaded) process; threads made later
    // inherit the mask, and children get an empty one (std resets it).
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let base_args = parse_cni_args(&std::env::var("CNI_ARGS").unwrap_or_default())?;
    let base_caps = parse_cap_args(&std::env::var("CAP_ARGS").unwrap_or_default())?;
    let lists: Vec<NetworkConfigList> = o.nets.iter().map(|n| ctx.load(&n.name)).collect::<Res<_>>()?;
    let mut cni = ctx.client();
    cni.own_process_group = true;
    for l in &lists {
        cleanup_dead_owners(&cni, l);
    }

    let pid = std::process::id();
    let start_time = cni_client::process_start_time(pid).unwrap_or(0);
    let (netns, owns_netns) = match &o.netns {
        Some(p) => {
            let p = goutil::abs(p).map_err(|e| Fail(format!("exec: --netns {p}: {e}")))?;
            cni::netns::Netns::open(&p).map_err(|e| {
                Fail(format!(
                    "exec: --netns: {}",
                    e.message().replace("CNI_NETNS", "namespace")
                ))
            })?;
            (p, false)
        }
        None => {
            let dir = std::env::var("CNITOOL_NETNS_DIR")
                .ok()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/run/netns".into());
            let path = format!("{dir}/cnitool-{pid}-{:x}", now_nanos() & 0xffff_ffff);
            nsfile::create(&dir, &path).map_err(|e| Fail(format!("exec: {e}")))?;
            (path, !o.keep)
        }
    };
    // With --keep the attachments outlive this process: no owner, as for `cnitool add`.
    let owner = Owner {
        pid,
        start_time,
        owns_netns,
    };
    let remove_ns = |netns: &str| {
        if owns_netns {
            nsfile::remove(netns);
        }
    };

    let mut attached: Vec<Attached> = Vec::new();
    for (i, (spec, list)) in o.nets.iter().zip(&lists).enumerate() {
        let mut rt = runtime_for(spec, i, list, &netns, &base_args, &base_caps, &owner);
        if o.keep {
            rt.owner = None;
        } else {
            // The record a killed exec leaves: written before the ADD, so that a kill during
            // the ADD is cleaned up too.
            let info = cni_client::CachedInfo {
                kind: cni_client::cache::CNI_CACHE_V1.into(),
                container_id: rt.container_id.clone(),
                config: list.bytes.clone(),
                ifname: rt.ifname.clone(),
                network_name: list.name.clone(),
                netns: rt.netns.clone(),
                cni_args: (!rt.args.is_empty()).then(|| rt.args.iter().map(|(k, v)| [k.clone(), v.clone()]).collect()),
                capability_args: rt.capability_args.clone(),
                result: None,
                owner: rt.owner.clone(),
            };
            if let Err(e) = cni.cache.write(&info) {
                teardown(&cni, &mut attached);
                remove_ns(&netns);
                return fail(format!("exec: {e}"));
            }
        }
        match cni.add_network_list(list, &rt) {
            Ok(r) => attached.push(Attached {
                list: list.clone(),
                rt,
                result: Some(r),
            }),
            Err(e) => {
                // Undo what the chain's plugins did before the failing one.
                attached.push(Attached {
                    list: list.clone(),
                    rt,
                    result: None,
                });
                teardown(&cni, &mut attached);
                remove_ns(&netns);
                return fail(format!("exec: add {}: {e}", list.name));
            }
        }
        if let Some(sig) = pending_termination(&set) {
            eprintln!("cnitool: exec: signal {sig} during setup: tearing down");
            teardown(&cni, &mut attached);
            remove_ns(&netns);
            return Ok(128 + sig);
        }
    }

    if o.command.is_empty() {
        // --keep without a command: the namespace, for a session to attach to.
        println!("{netns}");
        return Ok(0);
    }

    let results: Vec<Value> = attached
        .iter()
        .map(|a| {
            json!({"network": a.list.name, "ifname": a.rt.ifname, "containerId": a.rt.container_id,
                   "result": a.result.clone().unwrap_or(Value::Null)})
        })
        .collect();
    let results_dir = std::env::temp_dir().join(format!("cnitool-exec-{pid}-{:x}", now_nanos() & 0xffff_ffff));
    let results_file = results_dir.join("results.json");
    let wrote = std::fs::create_dir_all(&results_dir)
        .and_then(|_| {
            std::fs::write(
                &results_file,
                serde_json::to_vec_pretty(&results).expect("JSON serializes"),
            )
        })
        .and_then(|_| match &run_as {
            // The command's own, to read (and remove) as it likes.
            Some(r) => std::os::unix::fs::chown(&results_dir, Some(r.uid), Some(r.gid))
                .and_then(|_| std::os::unix::fs::chown(&results_file, Some(r.uid), Some(r.gid))),
            None => Ok(()),
        });
    let code = match wrote {
        Err(e) => {
            eprintln!("cnitool: exec: writing {}: {e}", results_file.display());
            1
        }
        Ok(()) => run_command(&o.command, &netns, &attached, &results_file, &set, run_as),
    };
    let _ = std::fs::remove_dir_all(&results_dir);
    if o.keep {
        eprintln!("cnitool: exec: namespace kept: {netns}");
    } else {
        let ok = teardown(&cni, &mut attached);
        remove_ns(&netns);
        if !ok && code == 0 {
            return Ok(1);
        }
    }
    Ok(code)
}

/// Runs the command in the namespace and waits for it, passing on termination signals.
/// Returns its exit status (128 + signal when a signal ended it).
fn run_command(
    command: &[String],
    netns: &str,
    attached: &[Attached],
    results_file: &PathBuf,
    set: &libc::sigset_t,
    run_as: Option<RunAs>,
) -> i32 {
    let ns = match std::fs::File::open(netns) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cnitool: exec: opening {netns}: {e}");
            return 1;
        }
    };
    let first = attached.first().and_then(|a| a.result.as_ref());
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("CNITOOL_NETNS", netns)
        .env("CNI_RESULTS_FILE", results_file);
    if let Some(r) = first {
        cmd.env("CNI_RESULT", r.to_string());
        if let Some(ip) = first_ip(r) {
            cmd.env("CNI_RESULT_IP", ip);
        }
    }
    let fd = ns.as_raw_fd();
    // SAFETY: between fork and exec only setns, setgroups, setgid and setuid (system calls,
    // no allocation: the group list was made before the fork), on an fd that stays open until
    // the spawn returns. The namespace first: entering it needs root.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(r) = &run_as {
                if libc::setgroups(r.groups.len(), r.groups.as_ptr()) != 0
                    || libc::setgid(r.gid) != 0
                    || libc::setuid(r.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cnitool: exec: running {}: {e}", command[0]);
            return 127;
        }
    };
    drop(ns);
    let cpid = child.id() as libc::pid_t;
    loop {
        let mut status = 0;
        // SAFETY: waitpid of our own child, not reaped elsewhere (Child::wait is never called).
        let r = unsafe { libc::waitpid(cpid, &mut status, libc::WNOHANG) };
        if r == cpid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
            continue;
        }
        if r < 0 {
            eprintln!(
                "cnitool: exec: waiting for {}: {}",
                command[0],
                std::io::Error::last_os_error()
            );
            return 1;
        }
        // SIGCHLD wakes this at once; the timeout only bounds a missed one.
        if let Some((sig, from_process)) = wait_signal(set, 1000) {
            if sig != libc::SIGCHLD && from_process {
                // SAFETY: kill(2) of our own child, which has not been reaped.
                unsafe { libc::kill(cpid, sig) };
            }
        }
    }
}
