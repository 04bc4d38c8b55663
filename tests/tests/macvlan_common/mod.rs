//! Test bed of the macvlan integration tests: private namespaces (removed on drop, also when
//! a test fails), a "host" namespace per test with a veth pair as the master, and running the
//! built plugin binaries inside it as a runtime would.
//!
//! Nothing here touches the machine's own interfaces, addresses or routes: the plugin runs
//! inside the test's host namespace, and every link it makes lives in the test's namespaces.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "mvt{}-{}-{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command; panics with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command; true when it succeeds.
pub fn try_sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A network namespace of this test, deleted on drop.
pub struct Ns {
    pub name: String,
    deleted: bool,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Ns { name, deleted: false };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NAME args...`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// `ip netns exec NAME args...`: true when it succeeds.
    pub fn exec_ok(&self, args: &[&str]) -> bool {
        let mut a = vec!["ip", "netns", "exec", &self.name];
        a.extend_from_slice(args);
        try_sh(&a)
    }

    /// One ping to `addr`, retried a few times (ARP and link-up take a moment).
    pub fn ping(&self, addr: &str) -> bool {
        (0..3).any(|_| self.exec_ok(&["ping", "-c1", "-W1", addr]))
    }

    pub fn has_link(&self, name: &str) -> bool {
        try_sh(&["ip", "-n", &self.name, "link", "show", "dev", name])
    }

    /// Names of the links other than `lo`.
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n != "lo")
            .collect()
    }

    /// The IPv4 addresses (with prefix) of `dev`.
    pub fn addrs4(&self, dev: &str) -> Vec<String> {
        let out = self.ip(&["-4", "-o", "addr", "show", "dev", dev]);
        out.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                it.position(|w| w == "inet")?;
                it.next().map(str::to_string)
            })
            .collect()
    }

    /// `ip -d link show dev` output.
    pub fn link_details(&self, dev: &str) -> String {
        self.ip(&["-d", "link", "show", "dev", dev])
    }

    pub fn mac(&self, dev: &str) -> String {
        let out = self.ip(&["-o", "link", "show", "dev", dev]);
        let mut it = out.split_whitespace();
        it.position(|w| w == "link/ether")
            .and_then(|_| it.next())
            .unwrap_or_default()
            .to_string()
    }

    /// Deletes the namespace now (as a runtime does before a late DEL).
    pub fn delete(&mut self) {
        if !self.deleted {
            sh(&["ip", "netns", "del", &self.name]);
            self.deleted = true;
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A temporary directory (lease store), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).expect("creating temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directory of the built binaries: `CNI_RS_BIN_DIR`, else the workspace's target/debug.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CNI_RS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

pub fn plugin_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// `CNI_PATH` for the plugin: our binaries first; the reference set of Debian as a fallback
/// for an IPAM plugin that is not built (yet).
pub fn cni_path() -> String {
    let ours = bin_dir();
    if !ours.join("host-local").is_file() {
        eprintln!("note: {} has no host-local; IPAM from /usr/lib/cni", ours.display());
    }
    format!("{}:/usr/lib/cni", ours.display())
}

/// Whether our own host-local is built (GC/STATUS need a 1.1.0 IPAM plugin).
pub fn our_host_local() -> bool {
    bin_dir().join("host-local").is_file()
}

/// The outcome of one plugin call.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub json: Value,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
    pub fn msg(&self) -> String {
        self.json["msg"].as_str().unwrap_or_default().to_string()
    }
    #[track_caller]
    pub fn expect_ok(self) -> Value {
        assert!(self.ok, "plugin failed: {} (stderr: {})", self.json, self.stderr);
        self.json
    }
    #[track_caller]
    pub fn expect_code(&self, code: u64) {
        assert!(!self.ok, "plugin succeeded, expected code {code}: {}", self.json);
        assert_eq!(self.code(), code, "{} (stderr: {})", self.json, self.stderr);
    }
}

/// One CNI call as a runtime makes it.
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<String>,
    pub ifname: &'a str,
    pub args: &'a str,
}

/// Runs plugin `name` inside namespace `inside` (the plugin's "host") with `call` and `conf`.
pub fn run_plugin(inside: &Ns, name: &str, call: &Call, conf: &Value) -> Out {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &inside.name])
        .arg(plugin_bin(name))
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", cni_path())
        .env("CNI_ARGS", call.args)
        .env_remove("CNI_NETNS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ns) = &call.netns {
        cmd.env("CNI_NETNS", ns);
    }
    let mut child = cmd.spawn().expect("spawning the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("writing the config");
    let out = child.wait_with_output().expect("waiting for the plugin");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("plugin stdout is not JSON ({e}): {stdout}"))
    };
    Out {
        ok: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A test's world: a host namespace whose veth pair `m0`/`m1` (both up) is the master, and a
/// lease store of its own.
pub struct Bed {
    pub data: TempDir,
    pub host: Ns,
    pub net: String,
}

impl Bed {
    pub fn new(tag: &str) -> Bed {
        let host = Ns::new(&format!("{tag}-h"));
        host.ip(&["link", "add", "m0", "type", "veth", "peer", "name", "m1"]);
        host.ip(&["link", "set", "m0", "up"]);
        host.ip(&["link", "set", "m1", "up"]);
        Bed {
            data: TempDir::new(tag),
            host,
            net: format!("mvnet-{tag}"),
        }
    }

    /// A macvlan config on `m0` with host-local on 10.77.0.0/24, `extra` merged in (a null
    /// value removes a key).
    pub fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": self.net,
            "type": "macvlan",
            "master": "m0",
            "ipam": {
                "type": "host-local",
                "dataDir": self.data.0.to_str().expect("utf-8 temp dir"),
                "ranges": [[{ "subnet": "10.77.0.0/24", "gateway": "10.77.0.1" }]]
            }
        });
        merge(&mut c, extra);
        c
    }

    pub fn run(&self, command: &str, id: &str, ns: Option<&Ns>, conf: &Value) -> Out {
        self.run_if(command, id, ns, "eth0", "", conf)
    }

    pub fn run_if(&self, command: &str, id: &str, ns: Option<&Ns>, ifname: &str, args: &str, conf: &Value) -> Out {
        run_plugin(
            &self.host,
            "macvlan",
            &Call {
                command,
                container_id: id,
                netns: ns.map(Ns::path),
                ifname,
                args,
            },
            conf,
        )
    }

    pub fn add(&self, id: &str, ns: &Ns, conf: &Value) -> Out {
        self.run("ADD", id, Some(ns), conf)
    }

    pub fn del(&self, id: &str, ns: Option<&Ns>, conf: &Value) -> Out {
        self.run("DEL", id, ns, conf)
    }

    /// CHECK with `prev` as `prevResult`.
    pub fn check(&self, id: &str, ns: &Ns, conf: &Value, prev: &Value) -> Out {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        self.run("CHECK", id, Some(ns), &c)
    }

    /// The addresses leased in this bed's store for network `net` (the reference's layout:
    /// one file per address).
    pub fn leases_of(&self, net: &str) -> Vec<String> {
        let dir = self.data.0.join(net);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // Lease files are named by their address; anything else is the store's own.
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    pub fn leases(&self) -> Vec<String> {
        self.leases_of(&self.net)
    }
}

/// Merges `extra` into `base` key by key (objects recursively); null removes a key.
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(slot) = b.get_mut(&k) {
                    if slot.is_object() && v.is_object() {
                        merge(slot, v);
                    } else {
                        *slot = v;
                    }
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, e) => *b = e,
    }
}

/// The address without its prefix.
pub fn ip_of(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_string()
}
