//! A throwaway etcd cluster for the tests of the etcd lease store: members on 127.0.0.1 with
//! free ports and temp data dirs (in the test's own namespace or in a given netns), stopped by
//! pid on drop, also when the test panics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Netns, TempDir};

/// TLS material of a cluster: the members serve https and require client certificates signed
/// by `ca`.
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One etcd member.
#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A cluster of etcd members on 127.0.0.1.
#[derive(Debug)]
pub struct Cluster {
    members: Vec<Member>,
    ns: Option<String>,
    tls: Option<Tls>,
    token: String,
    dir: TempDir,
    addr: String,
    /// More flags for every member.
    flags: Vec<String>,
}

/// Ports nobody listens on now (in this namespace).
fn free_ports(n: usize) -> Vec<u16> {
    let socks: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0"))
        .collect();
    socks.iter().map(|s| s.local_addr().unwrap().port()).collect()
}

impl Cluster {
    /// Starts `n` members in this test's namespace and waits until they are healthy.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, None, None)
    }

    /// Starts `n` members inside `ns` (on its 127.0.0.1), or here when `ns` is `None`, with
    /// TLS when given.
    pub fn start_with(n: usize, ns: Option<&Netns>, tls: Option<Tls>) -> Cluster {
        Self::start_on(n, ns, "127.0.0.1", tls)
    }

    /// Starts `n` members inside `ns` listening on `addr`, an address of that namespace the
    /// test gave it (127.0.0.1 in the test's own namespace).
    pub fn start_on(n: usize, ns: Option<&Netns>, addr: &str, tls: Option<Tls>) -> Cluster {
        Self::start_full(n, ns, addr, tls, &[])
    }

    /// Starts `n` members in this test's namespace, each with `flags` besides the usual ones
    /// (e.g. `--quota-backend-bytes`).
    pub fn start_with_flags(n: usize, flags: &[&str]) -> Cluster {
        Self::start_full(n, None, "127.0.0.1", None, flags)
    }

    fn start_full(n: usize, ns: Option<&Netns>, addr: &str, tls: Option<Tls>, flags: &[&str]) -> Cluster {
        // A port picked here may be taken by someone else before etcd binds it: a member that
        // exits at once means another try with other ports.
        for attempt in 0..3 {
            // In a fresh netns every port is free; here, ask the kernel.
            let ports: Vec<u16> = if ns.is_some() {
                (0..2 * n as u16).map(|i| 23790 + 100 * attempt + i).collect()
            } else {
                free_ports(2 * n)
            };
            let members = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client: ports[2 * i],
                    peer: ports[2 * i + 1],
                    child: None,
                })
                .collect();
            let mut c = Cluster {
                members,
                ns: ns.map(|n| n.name().to_string()),
                tls: tls.clone(),
                token: crate::unique_name("etcd-"),
                dir: TempDir::new("etcd"),
                addr: addr.to_string(),
                flags: flags.iter().map(|f| f.to_string()).collect(),
            };
            for i in 0..n {
                c.start_member(i);
            }
            if attempt == 2 || c.try_wait_healthy(Duration::from_secs(30)) {
                c.wait_healthy(Duration::from_secs(30));
                return c;
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Like [`Cluster::wait_healthy`], but `false` as soon as a member has exited.
    fn try_wait_healthy(&mut self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            for m in &mut self.members {
                if let Some(ch) = &mut m.child {
                    if ch.try_wait().ok().flatten().is_some() {
                        return false;
                    }
                }
            }
            if self.etcdctl(&[], &["endpoint", "health"]).status.success() {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn scheme(&self) -> &str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, self.addr, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn command(&self, program: &str) -> Command {
        match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Starts (or restarts, with its data) member `i`.
    pub fn start_member(&mut self, i: usize) {
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        let client_url = format!("{}://{}:{}", self.scheme(), self.addr, m.client);
        let peer_url = format!("http://{}:{}", self.addr, m.peer);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name))).expect("etcd log file");
        let mut cmd = self.command("etcd");
        cmd.args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--log-level", "warn", "--logger", "zap"])
            .args(&self.flags);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
        let child = cmd.spawn().expect("starting etcd (apt-get install etcd-server)");
        self.members[i].child = Some(child);
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut ch) = self.members[i].child.take() {
            // SAFETY: kill on the pid of a child we have not reaped yet.
            unsafe { libc::kill(ch.id() as i32, libc::SIGKILL) };
            let _ = ch.wait();
        }
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://{}:{}", self.scheme(), self.addr, m.client))
            .collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.endpoints()[i].clone()
    }

    /// Runs etcdctl against the members given (all running ones when empty).
    pub fn etcdctl(&self, eps: &[String], args: &[&str]) -> std::process::Output {
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{}://{}:{}", self.scheme(), self.addr, m.client))
            .collect();
        let eps = if !eps.is_empty() {
            eps.to_vec()
        } else if running.is_empty() {
            self.endpoints()
        } else {
            running
        };
        let mut cmd = self.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", eps.join(",")))
            .args(["--dial-timeout=2s", "--command-timeout=3s"]);
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.cert.display()))
                .arg(format!("--key={}", t.key.display()));
        }
        cmd.args(args).output().expect("running etcdctl")
    }

    /// Waits until every running member reports healthy; panics with the members' logs after
    /// `deadline`.
    pub fn wait_healthy(&self, deadline: Duration) {
        let end = Instant::now() + deadline;
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{}://{}:{}", self.scheme(), self.addr, m.client))
            .collect();
        loop {
            let out = self.etcdctl(&eps, &["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            if Instant::now() > end {
                panic!(
                    "etcd members not healthy within {deadline:?}: {}{}\nlog of m0: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(self.dir.join("m0.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the current leader among the running members, waiting up to `deadline`
    /// for one.
    pub fn leader(&self, deadline: Duration) -> usize {
        let end = Instant::now() + deadline;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let out = self.etcdctl(&[self.endpoint(i)], &["endpoint", "status", "-w", "json"]);
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                    continue;
                };
                let st = &v[0]["Status"];
                if st["leader"].as_u64().is_some_and(|l| l != 0) && st["leader"] == st["header"]["member_id"] {
                    return i;
                }
            }
            assert!(Instant::now() < end, "no etcd leader within {deadline:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until member `i` knows no leader (after the others died: the leader steps down
    /// when it loses its quorum).
    pub fn wait_no_leader(&self, i: usize, deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let out = self.etcdctl(&[self.endpoint(i)], &["endpoint", "status", "-w", "json"]);
            let leader = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v[0]["Status"]["leader"].as_u64());
            if leader.is_none_or(|l| l == 0) {
                return;
            }
            assert!(Instant::now() < end, "member {i} still has a leader after {deadline:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every key under `prefix` with its value.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.etcdctl(&[], &["get", "--prefix", prefix]);
        assert!(
            out.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    /// Puts `value` at `key`.
    pub fn put(&self, key: &str, value: &str) {
        let out = self.try_put(key, value);
        assert!(
            out.status.success(),
            "etcdctl put: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Puts `value` at `key`; etcdctl's output, whether it succeeded or not.
    pub fn try_put(&self, key: &str, value: &str) -> std::process::Output {
        self.etcdctl(&[], &["put", key, value])
    }
}

/// A key as `etcdctl get -w json` gives it.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

impl Cluster {
    /// Every key under `prefix` with its value and revisions (one linearizable read).
    pub fn kvs(&self, prefix: &str) -> Vec<Kv> {
        let out = self.etcdctl(&[], &["get", "--prefix", prefix, "-w", "json"]);
        assert!(
            out.status.success(),
            "etcdctl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl -w json");
        let text = |x: &serde_json::Value| String::from_utf8_lossy(&base64(x.as_str().unwrap_or(""))).into_owned();
        v["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| Kv {
                        key: text(&kv["key"]),
                        value: text(&kv["value"]),
                        create_revision: kv["create_revision"].as_i64().unwrap_or(0),
                        mod_revision: kv["mod_revision"].as_i64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The leases of network `net` under `prefix` (by readable address), after checking that
    /// the lease keys and both indexes agree: every lease has its attachment and host entries,
    /// with the same value, written in the same transaction; every index entry has its lease.
    pub fn leases(&self, prefix: &str, net: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        use std::collections::BTreeMap;
        let base = format!("{prefix}/{net}/");
        let kvs = self.kvs(&base);
        let mut leases: BTreeMap<String, &Kv> = BTreeMap::new();
        let mut att: BTreeMap<String, &Kv> = BTreeMap::new();
        let mut host: BTreeMap<String, &Kv> = BTreeMap::new();
        for kv in &kvs {
            let rest = &kv.key[base.len()..];
            if rest.starts_with("ip4/") || rest.starts_with("ip6/") {
                leases.insert(rest.to_string(), kv);
            } else if let Some(r) = rest.strip_prefix("att/") {
                att.insert(r.to_string(), kv);
            } else if let Some(r) = rest.strip_prefix("host/") {
                host.insert(r.to_string(), kv);
            }
        }
        let mut out = BTreeMap::new();
        for (addr, kv) in &leases {
            let l: serde_json::Value = serde_json::from_str(&kv.value).unwrap_or_else(|e| panic!("{}: {e}", kv.key));
            let ip = l["ip"]
                .as_str()
                .unwrap_or_else(|| panic!("{} has no ip: {}", kv.key, kv.value));
            let id = l["containerId"].as_str().unwrap();
            let ifname = l["ifname"].as_str().unwrap_or("");
            let h = l["host"].as_str().unwrap();
            let a = att
                .remove(&format!("{id}/{ifname}/{addr}"))
                .unwrap_or_else(|| panic!("lease {} has no attachment index entry", kv.key));
            let o = host
                .remove(&format!("{h}/{addr}"))
                .unwrap_or_else(|| panic!("lease {} has no host index entry", kv.key));
            for e in [a, o] {
                assert_eq!(e.value, kv.value, "{} disagrees with {}", e.key, kv.key);
                assert_eq!(
                    e.mod_revision, kv.mod_revision,
                    "{} written apart from {}",
                    e.key, kv.key
                );
            }
            out.insert(ip.to_string(), l);
        }
        assert!(
            att.is_empty(),
            "attachment index entries without a lease: {:?}",
            att.keys()
        );
        assert!(host.is_empty(), "host index entries without a lease: {:?}", host.keys());
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

/// Makes a CA and a certificate for 127.0.0.1 (server and client use) signed by it, with
/// openssl, in `dir`; with `tag` in the file names.
pub fn make_certs(dir: &std::path::Path, tag: &str) -> Tls {
    let p = |n: &str| dir.join(format!("{tag}-{n}"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &s(p("ca-key.pem")),
        "-out",
        &s(p("ca.pem")),
    ]);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &s(p("key.pem")),
        "-out",
        &s(p("csr.pem")),
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &s(p("csr.pem")),
        "-CA",
        &s(p("ca.pem")),
        "-CAkey",
        &s(p("ca-key.pem")),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(p("ext.cnf")),
        "-out",
        &s(p("cert.pem")),
    ]);
    Tls {
        ca: p("ca.pem"),
        cert: p("cert.pem"),
        key: p("key.pem"),
    }
}
