//! What the hardening suites (`bad_input`, `killed`, `load`, `safety`) share: calls in process
//! groups of their own that can be killed whole, how such a call ended, a lease store read
//! strictly, and a seeded pseudo-random generator for kill timings.

use std::path::Path;

use serde_json::Value;

use crate::{lease_files, Cni, Netns, Running};

/// A cheap pseudo-random generator (xorshift), seeded from the clock unless `HARDENING_SEED`
/// is set; the seed is printed so that a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(tag: &str) -> Rng {
        let seed = std::env::var("HARDENING_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
            });
        eprintln!("{tag}: HARDENING_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A call of our `plugin` started in a process group of its own (so that it and its IPAM
/// child can be killed together, [`Running::kill_group`]), inside the host namespace `host`,
/// as a runtime runs it.
pub fn spawn_group(plugin: &str, host: &Netns, cmd: &str, id: &str, netns: &str, conf: &Value) -> Running {
    Cni::call(plugin, host, cmd, id, Some(netns), conf)
        .process_group()
        .spawn()
}

/// How a call that may have been killed ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ending {
    Ok,
    Killed,
    Failed(u64),
}

/// What the output of a call that was not itself killed must look like: one JSON document
/// (a result or the spec's error), no panic.
#[track_caller]
pub fn check_output(what: &str, out: &std::process::Output) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.to_lowercase().contains("panic"), "{what}: panicked: {stderr}");
    if out.status.signal().is_some() {
        return Ending::Killed;
    }
    if out.status.success() && stdout.trim().is_empty() {
        return Ending::Ok; // DEL, CHECK, GC
    }
    let v: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {stdout:?}"));
    if out.status.success() {
        Ending::Ok
    } else {
        let code = v["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: not an error JSON: {stdout}"));
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {stdout}");
        Ending::Failed(code)
    }
}

/// The addresses of the lease files of a store, checked whole: each names a container and
/// `eth0`. Returns (address, container id).
#[track_caller]
pub fn whole_leases(dir: &Path) -> Vec<(String, String)> {
    lease_files(dir)
        .into_iter()
        .map(|(ip, content)| {
            let (id, ifname) = content
                .split_once("\r\n")
                .unwrap_or_else(|| panic!("partial or empty lease {ip}: {content:?}"));
            assert_eq!(ifname, "eth0", "lease {ip}: {content:?}");
            assert!(!id.is_empty(), "lease {ip}: {content:?}");
            (ip, id.to_string())
        })
        .collect()
}

/// Files of ours that a killed writer may leave in a network directory (`.tmp-*`), sorted.
pub fn temp_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    v.sort();
    v
}
