//! Killed processes: ADDs SIGKILLed at random moments (the plugin and its IPAM child, or the
//! child alone), then DEL for every container: nothing may be left behind; host-local killed
//! mid-ADD never leaves a partial lease; a lock of a killed holder is released. The plugins are
//! run as a runtime runs them, inside private "host" namespaces, with private lease stores;
//! nothing here touches the machine's own interfaces, addresses, routes or firewall.
//!
//! Needs root and `cargo build --workspace`. `HARDENING_SEED` replays a run's kill timings.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use cni_tests::hardening::{check_output, spawn_group, temp_files, whole_leases, Ending, Rng};
use cni_tests::node::{links, nat_rules, nft_ruleset};
use cni_tests::{lease_files, Netns, TempDir};
use serde_json::{json, Value};

/// The pids of the children of `pid` whose command is `comm`.
fn children_named(pid: u32, comm: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if name == comm && ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Many ADDs, killed at random moments (the whole process group, or the IPAM child alone, or
/// not at all), then DEL for every container as a runtime does after a failed ADD: nothing may
/// be left, no address may be held twice, and the next ADD must work.
fn killed_adds(plugin: &'static str) {
    const ROUNDS: usize = 40;
    let host = Netns::new();
    let data = TempDir::new(&format!("kill-{plugin}"));
    let net = format!("kill{}", plugin.replace('-', ""));
    let ipam = json!({"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.81.0.0/24"}]]});
    let conf = match plugin {
        "bridge" => json!({
            "cniVersion": "1.0.0", "name": net, "type": "bridge", "bridge": "kbr0",
            "isGateway": true, "ipMasq": true, "ipam": ipam
        }),
        "macvlan" => {
            host.ip(&["link", "add", "m0", "type", "veth", "peer", "name", "m1"]);
            host.ip(&["link", "set", "m0", "up"]);
            host.ip(&["link", "set", "m1", "up"]);
            json!({"cniVersion": "1.0.0", "name": net, "type": "macvlan", "master": "m0", "ipam": ipam})
        }
        _ => unreachable!(),
    };
    let store = data.join(&net);
    let host_links_before: Vec<(String, String)> = links(&host);
    let mut rng = Rng::new(&format!("killed_adds({plugin})"));
    let mut ctrs: Vec<(String, Netns)> = Vec::new();
    let mut endings: BTreeMap<Ending, usize> = BTreeMap::new();
    let mut alive: HashMap<String, String> = HashMap::new(); // address -> id, of successful ADDs
    let mut child_kills = 0;

    for i in 0..ROUNDS {
        let ns = Netns::new();
        let id = format!("k{i}");
        let mut child = spawn_group(plugin, &host, "ADD", &id, &ns.path(), &conf);
        let pid = child.id();
        match rng.below(10) {
            // The plugin and everything it started.
            0..=4 => {
                std::thread::sleep(Duration::from_micros(rng.below(15_000)));
                child.kill_group();
            }
            // The IPAM child alone, at a random moment of its life.
            5..=7 => {
                let until = Instant::now() + Duration::from_secs(2);
                let delay = Duration::from_micros(rng.below(4_000));
                loop {
                    if let Some(&c) = children_named(pid, "host-local").first() {
                        std::thread::sleep(delay);
                        // SAFETY: kill(2) of a child of our child, which cannot have been
                        // reaped yet (its parent waits for it).
                        unsafe { libc::kill(c, libc::SIGKILL) };
                        child_kills += 1;
                        break;
                    }
                    if Instant::now() > until || child.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            _ => {}
        }
        let out = child.wait_with_output().unwrap();
        let ending = check_output(&format!("ADD {id}"), &out);
        if ending == Ending::Ok {
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
            if let Some(other) = alive.insert(addr.clone(), id.clone()) {
                panic!("{addr} given to {other} and {id}");
            }
        }
        *endings.entry(ending).or_default() += 1;
        ctrs.push((id, ns));
    }
    eprintln!("killed_adds({plugin}): {endings:?}, IPAM children killed: {child_kills}");

    // No address held twice; every lease whole; the store readable by the next calls.
    let leases = whole_leases(&store);
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for (ip, id) in &leases {
        *per_id.entry(id.as_str()).or_default() += 1;
        if let Some(owner) = alive.get(&format!("{ip}/24")) {
            assert_eq!(owner, id, "lease {ip}");
        }
    }
    assert!(
        per_id.values().all(|&n| n == 1),
        "an id holds several addresses: {leases:?}"
    );
    for (addr, id) in &alive {
        assert!(
            leases.iter().any(|(ip, i)| format!("{ip}/24") == *addr && i == id),
            "{id} lost its lease {addr}"
        );
    }

    // DEL for every container, as a runtime does, ADD killed or not.
    for (id, ns) in &ctrs {
        let out = spawn_group(plugin, &host, "DEL", id, &ns.path(), &conf)
            .wait_with_output()
            .unwrap();
        assert_eq!(
            check_output(&format!("DEL {id}"), &out),
            Ending::Ok,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let assert_clean = |when: &str, ctrs: &[(String, Netns)]| {
        let mut left = Vec::new();
        if !lease_files(&store).is_empty() {
            left.push(format!("leases: {:?}", lease_files(&store)));
        }
        if !temp_files(&store).is_empty() {
            left.push(format!("temp files: {:?}", temp_files(&store)));
        }
        let mut now: Vec<(String, String)> = links(&host);
        now.retain(|(n, _)| !(plugin == "bridge" && n == "kbr0"));
        if now != host_links_before {
            left.push(format!("links in the host namespace: {now:?}"));
        }
        for (id, ns) in ctrs {
            if !links(ns).is_empty() {
                left.push(format!("links in the namespace of {id}: {:?}", links(ns)));
            }
        }
        let nat: Vec<String> = nat_rules(&host)
            .into_iter()
            .filter(|r| r.contains("CNI-") || r.contains(&net))
            .collect();
        if !nat.is_empty() {
            left.push(format!("NAT rules: {nat:?}"));
        }
        let nft = nft_ruleset(&host);
        if nft.contains(&format!("net: {net}")) {
            left.push(format!("nftables rules: {nft}"));
        }
        assert!(left.is_empty(), "{when}, left behind:\n{}", left.join("\n"));
    };
    assert_clean("after the DELs", &ctrs);

    // The next ADD works, and its DEL leaves nothing either.
    let ns = Netns::new();
    let out = spawn_group(plugin, &host, "ADD", "after", &ns.path(), &conf)
        .wait_with_output()
        .unwrap();
    assert_eq!(
        check_output("ADD after", &out),
        Ending::Ok,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(whole_leases(&store).len(), 1);
    let out = spawn_group(plugin, &host, "DEL", "after", &ns.path(), &conf)
        .wait_with_output()
        .unwrap();
    assert_eq!(check_output("DEL after", &out), Ending::Ok);
    ctrs.push(("after".into(), ns));
    assert_clean("after the last ADD and DEL", &ctrs);
}

#[test]
fn killed_bridge_adds_leave_nothing() {
    killed_adds("bridge");
}

#[test]
fn killed_macvlan_adds_leave_nothing() {
    killed_adds("macvlan");
}

/// host-local alone, killed at random moments of an ADD many times over: every lease file is
/// whole (the lease store never holds a half-written lease), and what the killed calls left
/// is released by DEL.
#[test]
fn killed_host_local_never_leaves_a_partial_lease() {
    let data = TempDir::new("kill-hl");
    let host = Netns::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "killhl", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.82.0.0/24"}], [{"subnet": "fd00:82::/64"}]]}});
    let store = data.join("killhl");
    let mut rng = Rng::new("killed_host_local");
    let mut ids = Vec::new();
    for i in 0..120 {
        let id = format!("h{i}");
        let child = spawn_group("host-local", &host, "ADD", &id, "/var/run/netns/none", &conf);
        std::thread::sleep(Duration::from_micros(rng.below(6_000)));
        child.kill_group();
        let out = child.wait_with_output().unwrap();
        check_output(&format!("ADD {id}"), &out);
        let leases = whole_leases(&store);
        let held: HashSet<&String> = leases.iter().map(|(_, id)| id).collect();
        assert!(leases.len() <= 2 * held.len(), "{leases:?}");
        ids.push(id);
    }
    for id in &ids {
        let out = spawn_group("host-local", &host, "DEL", id, "/var/run/netns/none", &conf)
            .wait_with_output()
            .unwrap();
        assert_eq!(check_output(&format!("DEL {id}"), &out), Ending::Ok);
    }
    assert!(lease_files(&store).is_empty(), "{:?}", lease_files(&store));
    assert!(temp_files(&store).is_empty(), "{:?}", temp_files(&store));
}

/// A lock held by a process that is killed is released by the kernel: the waiting ADD goes on.
#[test]
fn lock_of_a_killed_holder_is_released() {
    let data = TempDir::new("lock");
    let host = Netns::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "locknet", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.83.0.0/24"}]]}});
    let add = |id: &str| spawn_group("host-local", &host, "ADD", id, "/var/run/netns/none", &conf);
    assert_eq!(
        check_output("first ADD", &add("first").wait_with_output().unwrap()),
        Ending::Ok
    );
    let lock = data.join("locknet/lock");
    assert!(lock.is_file());

    // A process that takes the lock as host-local does (flock, exclusive) and keeps it.
    let path = CString::new(lock.to_str().unwrap()).unwrap();
    let mut holder = Command::new("sleep");
    holder.arg("600");
    // SAFETY: open and flock (async-signal-safe) between fork and exec; the fd is not
    // close-on-exec, so `sleep` holds the lock.
    unsafe {
        holder.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            if fd < 0 || libc::flock(fd, libc::LOCK_EX) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut holder = holder.spawn().unwrap();
    let is_locked = || {
        let f = std::fs::File::open(&lock).unwrap();
        // SAFETY: flock on an fd we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        r != 0
    };
    let t = Instant::now();
    while !is_locked() {
        assert!(t.elapsed() < Duration::from_secs(5), "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut waiting = add("second");
    // The ADD waits for the lock: it has the lock file open (the wait polls with a deadline,
    // so /proc/locks lists no waiter).
    let fds = format!("/proc/{}/fd", waiting.id());
    let t = Instant::now();
    loop {
        let has_lock_open = std::fs::read_dir(&fds)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == lock))
            })
            .unwrap_or(false);
        if has_lock_open {
            break;
        }
        assert!(waiting.try_wait().unwrap().is_none(), "ADD did not wait for the lock");
        assert!(t.elapsed() < Duration::from_secs(10), "ADD never opened the lock");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(waiting.try_wait().unwrap().is_none(), "ADD did not wait for the lock");
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    let t = Instant::now();
    let out = loop {
        if waiting.try_wait().unwrap().is_some() {
            break waiting.wait_with_output().unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "ADD still waits after the holder died"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        check_output("second ADD", &out),
        Ending::Ok,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ids: Vec<String> = whole_leases(&data.join("locknet"))
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&"second".to_string()));
}
