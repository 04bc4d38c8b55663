//! `cnitool`, driven as a user and a script drive it: inside a private "host" namespace (the
//! plugins' host: bridges, host veths, firewall rules), with the plugins of target/debug and
//! the reference `portmap`/`tuning`, a private NETCONFPATH, cache directory and lease store.
//! Never the machine's own interfaces, and never /var/lib/cni.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use cni_tests::{bin, bin_dir, eventually, in_ci, lease_files, sh, workspace_dir, Netns, TempDir, REFERENCE_DIR};
use serde_json::{json, Value};

/// What one cnitool run gave.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "cnitool failed: {}{}", self.stdout, self.stderr);
        self
    }

    /// Asserts a failure (exit 1) with one line on stderr containing `want`.
    #[track_caller]
    fn fails_with(&self, want: &str) {
        assert_eq!(self.code, Some(1), "expected failure: {}{}", self.stdout, self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {:?}", self.stderr);
        assert!(
            lines[0].starts_with("cnitool: ") && lines[0].contains(want),
            "{:?} lacks {want:?}",
            lines[0]
        );
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// A test's world: a host namespace, a config dir, a cache dir, a lease store.
struct Bed {
    host: Netns,
    conf: TempDir,
    cache: TempDir,
    data: TempDir,
    env: Vec<(String, String)>,
}

impl Bed {
    fn new() -> Bed {
        let b = Bed {
            host: Netns::new(),
            conf: TempDir::new("ctconf"),
            cache: TempDir::new("ctcache"),
            data: TempDir::new("ctdata"),
            env: Vec::new(),
        };
        // The plugins' namespaces made by exec go to a directory of this test.
        b
    }

    /// Writes conf-example `name` into NETCONFPATH with the lease store in the test's dir and
    /// the `extra` plugins appended; returns the list.
    fn example(&self, name: &str, extra: &[Value]) -> Value {
        let text = std::fs::read_to_string(workspace_dir().join("conf-examples").join(name)).unwrap();
        let mut list: Value = serde_json::from_str(&text).unwrap();
        list["plugins"][0]["ipam"]["dataDir"] = json!(self.data.path());
        list["plugins"].as_array_mut().unwrap().extend(extra.iter().cloned());
        std::fs::write(self.conf.join(name), list.to_string()).unwrap();
        list
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("cnitool"));
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("NETCONFPATH", self.conf.path())
            .env("CNI_PATH", format!("{}:{REFERENCE_DIR}", bin_dir().display()))
            .env("CNI_CACHE_DIR", self.cache.path())
            .env("CNITOOL_NETNS_DIR", "/run/netns");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let f = File::open(self.host.path()).unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: only setns (async-signal-safe) between fork and exec, on an fd that the
        // leaked File keeps open for the test's lifetime.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        std::mem::forget(f);
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_env(args, &[])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().expect("running cnitool");
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn spawn(&self, args: &[&str]) -> Child {
        let mut c = self.command(args);
        c.process_group(0).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().expect("spawning cnitool")
    }

    fn cached(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cache.join("results"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn leases(&self, net: &str) -> Vec<(String, String)> {
        lease_files(&self.data.join(net))
    }

    fn nat_rules(&self) -> String {
        String::from_utf8_lossy(&self.host.exec(&["iptables", "-w", "-t", "nat", "-S"]).stdout).into_owned()
    }
}

/// The upstream cnitool's id of `path`, as Go computes it (`crypto/sha512`); two values
/// computed with Go for the tests (see also `tests/libcni-client`, which derives it in Go).
fn go_id(path: &str) -> String {
    cni_client::goutil::cnitool_container_id(path)
}

fn has_reference(names: &[&str]) -> bool {
    names.iter().all(|n| cni_tests::reference_bin(n).is_some())
}

fn addr_of(r: &Value) -> String {
    r["ips"][0]["address"].as_str().unwrap_or_default().to_string()
}

#[test]
fn container_id_is_upstreams_for_a_known_path() {
    // Computed with Go 1.19: fmt.Sprintf("cnitool-%x", sha512.Sum512([]byte(p))[:10]).
    assert_eq!(go_id("/run/netns/test"), "cnitool-8ae22670664f2caaa6b3");
    assert_eq!(go_id("/var/run/netns/a b"), "cnitool-7f699cec5e1aab393b2d");
}

#[test]
fn add_check_del_status_on_the_bridge_conflist_with_portmap_and_tuning() {
    if !has_reference(&["portmap", "tuning"]) {
        return;
    }
    let bed = Bed::new();
    bed.example(
        "bridge.conflist",
        &[
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            json!({"type": "tuning", "mtu": 1300, "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}}),
        ],
    );
    let ctr = Netns::new();
    let caps = r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],"other":1}"#;
    let out = bed.run_env(&["add", "rsbr-v4", &ctr.path()], &[("CAP_ARGS", caps)]);
    out.ok();
    let r = out.json();
    assert!(addr_of(&r).starts_with("10.88.0."), "{r}");
    assert!(
        out.stdout.starts_with("{\n    \"cniVersion\""),
        "printed as Go prints: {}",
        out.stdout
    );
    assert!(ctr.ip(&["-br", "addr", "show", "eth0"]).contains(&addr_of(&r)));
    assert!(
        ctr.ip(&["link", "show", "eth0"]).contains("mtu 1300"),
        "tuning got the prevResult"
    );
    assert!(
        bed.nat_rules().contains("--dport 8080"),
        "portmap got its capability: {}",
        bed.nat_rules()
    );
    // The cache entry: libcni's place and format, our container id.
    let id = go_id(&ctr.path());
    let entry = format!("rsbr-v4-{id}-eth0");
    assert_eq!(bed.cached(), std::slice::from_ref(&entry));
    let cached: Value =
        serde_json::from_slice(&std::fs::read(bed.cache.join("results").join(&entry)).unwrap()).unwrap();
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], id.as_str());
    assert_eq!(cached["result"], r);
    assert_eq!(
        cached["capabilityArgs"]["other"], 1,
        "all capability args are cached, as libcni"
    );
    assert_eq!(bed.leases("rsbr-v4").len(), 1);

    // CHECK without the port mappings (CAP_ARGS set, so the cached ones are not used): the
    // reference portmap 1.1.1's CHECK of a mapping looks for its IPv4 chain in ip6tables (its
    // bug, as in bridge.rs).
    bed.run_env(&["check", "rsbr-v4", &ctr.path()], &[("CAP_ARGS", "{}")])
        .ok();
    bed.run(&["status", "rsbr-v4"]).ok();
    bed.run(&["status", "rsbr-v4", &ctr.path()]).ok();
    // list shows it.
    let l = bed.run(&["list", "--json"]);
    let rows = l.ok().json();
    assert_eq!(rows[0]["containerId"], id.as_str());
    assert_eq!(rows[0]["ips"][0], addr_of(&r).as_str());
    assert_eq!(rows[0]["netns"], ctr.path().as_str());
    let table = bed.run(&["list"]);
    assert!(table.ok().stdout.starts_with("NETWORK"), "{}", table.stdout);
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("rsbr-v4"),
        "{}",
        table.stdout
    );

    bed.run(&["del", "rsbr-v4", &ctr.path()]).ok();
    assert!(ctr.links().is_empty(), "{:?}", ctr.links());
    assert!(bed.leases("rsbr-v4").is_empty());
    assert!(bed.cached().is_empty());
    assert!(
        !bed.nat_rules().contains("--dport 8080"),
        "portmap's DEL ran: {}",
        bed.nat_rules()
    );
    // A DEL of something never added (and without a cache entry) succeeds.
    bed.run(&["del", "rsbr-v4", &ctr.path()]).ok();
}

#[test]
fn macvlan_conflist_and_gc_collects_every_cached_attachment() {
    if !has_reference(&["tuning"]) {
        return;
    }
    let bed = Bed::new();
    bed.host
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "lan0"]);
    bed.host.ip(&["link", "set", "eth0", "up"]);
    bed.example("macvlan-range.conflist", &[json!({"type": "tuning", "promisc": true})]);
    let (a, b) = (Netns::new(), Netns::new());
    let ra = bed.run(&["add", "rsmacvlan-range", &a.path()]);
    let ra = ra.ok().json();
    assert_eq!(addr_of(&ra), "192.168.1.100/24");
    bed.run_env(&["add", "rsmacvlan-range", &b.path(), "-i", "net1"], &[])
        .ok();
    assert!(b.ip(&["-d", "link", "show", "net1"]).contains("macvlan mode bridge"));
    bed.run(&["check", "rsmacvlan-range", &a.path()]).ok();
    bed.run(&["check", "rsmacvlan-range", &b.path(), "--ifname", "net1"])
        .ok();
    assert_eq!(bed.cached().len(), 2);
    // Upstream's gc: every cached attachment of the network goes (the netns argument ignored).
    bed.run(&["gc", "rsmacvlan-range", "/whatever"]).ok();
    assert!(bed.cached().is_empty());
    assert!(
        a.links().is_empty() && b.links().is_empty(),
        "{:?} {:?}",
        a.links(),
        b.links()
    );
    assert!(
        bed.leases("rsmacvlan-range").is_empty(),
        "{:?}",
        bed.leases("rsmacvlan-range")
    );
}

/// Builds the libcni client of tests/libcni-client once.
fn cnirt() -> Option<String> {
    static BUILT: OnceLock<Option<String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if Command::new("go").arg("version").output().is_err() {
                assert!(!in_ci(), "go is missing in CI (make deps installs golang-go)");
                eprintln!("*** SKIPPED: go is not installed; the libcni test did not run ***");
                return None;
            }
            let out = bin_dir().join("cnirt");
            let script = workspace_dir().join("tests/libcni-client/build.sh");
            sh(&["bash", script.to_str().unwrap(), out.to_str().unwrap()]);
            Some(out.to_string_lossy().into_owned())
        })
        .clone()
}

/// A plugin that records its config per verb in `$RECORD_DIR` and passes the prevResult on.
fn recorder(dir: &Path) -> PathBuf {
    let p = dir.join("record");
    std::fs::write(
        &p,
        "#!/bin/sh\nset -e\ncat > \"$RECORD_DIR/$CNI_COMMAND.json\"\n\
         if [ \"$CNI_COMMAND\" = ADD ]; then jq -c .prevResult \"$RECORD_DIR/ADD.json\"; fi\n",
    )
    .unwrap();
    sh(&["chmod", "755", p.to_str().unwrap()]);
    p
}

#[test]
fn cache_interop_both_ways_with_libcni() {
    let Some(client) = cnirt() else { return };
    let bed = Bed::new();
    let plugins = TempDir::new("ctplug");
    recorder(plugins.path());
    let list = bed.example("bridge.conflist", &[json!({"type": "record"})]);
    let file = bed.conf.join("bridge.conflist");
    let record = TempDir::new("ctrec");
    let cni_path = format!("{}:{}:{REFERENCE_DIR}", plugins.path().display(), bin_dir().display());
    let libcni = |verb: &str, netns: &str| {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                bed.host.name(),
                &client,
                verb,
                file.to_str().unwrap(),
                netns,
            ])
            .env("CNI_PATH", &cni_path)
            .env("CNI_CACHE_DIR", bed.cache.path())
            .env("RECORD_DIR", record.path())
            .env_remove("CNI_CONTAINERID")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "libcni {verb}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let ours = |args: &[&str]| {
        bed.run_env(
            args,
            &[("CNI_PATH", &cni_path), ("RECORD_DIR", record.path().to_str().unwrap())],
        )
    };
    let recorded = |verb: &str| -> Value {
        serde_json::from_slice(&std::fs::read(record.join(format!("{verb}.json"))).unwrap()).unwrap()
    };
    assert_eq!(list["name"], "rsbr-v4");

    // libcni adds, ours checks and deletes: same id, the DEL gets libcni's cached result.
    let a = Netns::new();
    let r: Value = serde_json::from_str(&libcni("add", &a.path())).unwrap();
    assert_eq!(
        bed.cached(),
        [format!("rsbr-v4-{}-eth0", go_id(&a.path()))],
        "libcni's id is ours"
    );
    ours(&["check", "rsbr-v4", &a.path()]).ok();
    assert_eq!(recorded("CHECK")["prevResult"], r);
    ours(&["del", "rsbr-v4", &a.path()]).ok();
    assert_eq!(recorded("DEL")["prevResult"], r, "the DEL got the result libcni cached");
    assert!(a.links().is_empty() && bed.cached().is_empty() && bed.leases("rsbr-v4").is_empty());

    // Ours adds, libcni checks and deletes.
    let b = Netns::new();
    let out = ours(&["add", "rsbr-v4", &b.path()]);
    let r = out.ok().json();
    libcni("check", &b.path());
    assert_eq!(recorded("CHECK")["prevResult"], r);
    libcni("del", &b.path());
    assert_eq!(
        recorded("DEL")["prevResult"],
        r,
        "libcni's DEL got the result we cached"
    );
    assert_eq!(recorded("DEL")["name"], "rsbr-v4");
    assert!(b.links().is_empty() && bed.cached().is_empty() && bed.leases("rsbr-v4").is_empty());
}

/// A LAN peer on the bridge network: attached with `cnitool add`.
fn peer(bed: &Bed) -> (Netns, String) {
    let p = Netns::new();
    let r = bed.run(&["add", "rsbr-v4", &p.path()]).ok().json();
    let ip = addr_of(&r).split('/').next().unwrap().to_string();
    (p, ip)
}

#[test]
fn exec_pings_gateway_and_peer_with_a_static_ip_and_passes_the_exit_status() {
    let bed = Bed::new();
    bed.example("bridge.conflist", &[]);
    let (_p, peer_ip) = peer(&bed);
    let seen = TempDir::new("ctseen");
    let script = format!(
        "set -e; echo \"$CNITOOL_NETNS\" > {d}/ns; cp \"$CNI_RESULTS_FILE\" {d}/results.json; \
         test \"$CNI_RESULT_IP\" = 10.88.0.77; ping -c1 -W3 10.88.0.1 >/dev/null; ping -c1 -W3 {peer_ip} >/dev/null; \
         ip -br addr show eth0 > {d}/addr; exit 7",
        d = seen.path().display()
    );
    let out = bed.run(&["exec", "rsbr-v4", "--ip", "10.88.0.77", "--", "sh", "-c", &script]);
    assert_eq!(out.code, Some(7), "the command's status: {}{}", out.stdout, out.stderr);
    assert!(std::fs::read_to_string(seen.join("addr"))
        .unwrap()
        .contains("10.88.0.77/24"));
    let results: Value = serde_json::from_slice(&std::fs::read(seen.join("results.json")).unwrap()).unwrap();
    assert_eq!(results[0]["network"], "rsbr-v4");
    assert_eq!(addr_of(&results[0]["result"]), "10.88.0.77/24");
    // Torn down: the namespace, the attachment, the lease; the peer's stay.
    let ns = std::fs::read_to_string(seen.join("ns")).unwrap().trim().to_string();
    assert!(ns.starts_with("/run/netns/cnitool-"), "{ns}");
    assert!(!Path::new(&ns).exists(), "{ns} removed");
    assert_eq!(bed.cached().len(), 1, "only the peer: {:?}", bed.cached());
    let leases = bed.leases("rsbr-v4");
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_ne!(leases[0].0, "10.88.0.77");
    // A failing command: its status too; a command that is not found: 127.
    assert_eq!(bed.run(&["exec", "rsbr-v4", "--", "false"]).code, Some(1));
    assert_eq!(bed.run(&["exec", "rsbr-v4", "--", "/nonexistent/cmd"]).code, Some(127));
    assert_eq!(bed.cached().len(), 1);
    assert_eq!(bed.leases("rsbr-v4").len(), 1);
}

#[test]
fn exec_runs_the_command_as_the_user_who_ran_sudo() {
    let bed = Bed::new();
    bed.example("bridge.conflist", &[]);
    let script = "id -u; id -g; id -G; test -r \"$CNI_RESULTS_FILE\" && echo readable; \
                  ip -br -4 addr show eth0 | grep -q 10.88.0. && echo attached";
    // Under sudo: the user who ran it, with their groups (nobody: nogroup only).
    let sudo = [("SUDO_UID", "65534"), ("SUDO_GID", "65534"), ("SUDO_USER", "nobody")];
    let out = bed.run_env(&["exec", "rsbr-v4", "--", "sh", "-c", script], &sudo);
    out.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        ["65534", "65534", "65534", "readable", "attached"],
        "{}",
        out.stderr
    );
    assert!(
        bed.cached().is_empty() && bed.leases("rsbr-v4").is_empty(),
        "torn down as root"
    );
    // Not under sudo, or sudo from root: cnitool's own user.
    for env in [&[][..], &[("SUDO_UID", "0"), ("SUDO_GID", "0")][..]] {
        let out = bed.run_env(&["exec", "rsbr-v4", "--", "id", "-u"], env);
        assert_eq!(out.ok().stdout.trim(), "0", "{env:?}");
    }
    // A SUDO_UID that is no user id: one line, before anything is made.
    bed.run_env(&["exec", "rsbr-v4", "--", "true"], &[("SUDO_UID", "nobody")])
        .fails_with("SUDO_UID=\"nobody\" is not a user id");
    assert!(bed.cached().is_empty() && bed.leases("rsbr-v4").is_empty());
}

/// Starts `exec` with a long command; returns the child and the namespace path, once the
/// command runs.
fn start_exec(bed: &Bed, seen: &TempDir) -> (Child, String) {
    let script = format!(
        "echo \"$CNITOOL_NETNS\" > {}/ns.tmp && mv {0}/ns.tmp {0}/ns; exec sleep 60",
        seen.path().display()
    );
    let child = bed.spawn(&["exec", "rsbr-v4", "--", "sh", "-c", &script]);
    let f = seen.join("ns");
    eventually(Duration::from_secs(20), "the exec's command runs", || f.exists());
    let ns = std::fs::read_to_string(&f).unwrap().trim().to_string();
    (child, ns)
}

/// Kills the process group `0` leads when dropped (a test that fails half-way leaves no exec
/// running).
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // SAFETY: kill(2) of a process group this test started (ESRCH once it is gone).
        unsafe { libc::kill(-(self.0 as i32), libc::SIGKILL) };
    }
}

fn wait_within(child: &mut Child, d: Duration) -> std::process::ExitStatus {
    let mut status = None;
    eventually(d, "cnitool exec ends", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

#[test]
fn exec_tears_down_on_sigint_and_sigterm() {
    let bed = Bed::new();
    bed.example("bridge.conflist", &[]);
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let seen = TempDir::new("ctsig");
        let (mut child, ns) = start_exec(&bed, &seen);
        let _guard = GroupGuard(child.id());
        assert_eq!(bed.cached().len(), 1);
        assert_eq!(bed.leases("rsbr-v4").len(), 1);
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = wait_within(&mut child, Duration::from_secs(30));
        assert_eq!(
            status.code(),
            Some(128 + sig),
            "{name}: the command's status (killed by the signal passed on)"
        );
        assert!(!Path::new(&ns).exists(), "{name}: namespace removed");
        assert!(bed.cached().is_empty(), "{name}: {:?}", bed.cached());
        assert!(bed.leases("rsbr-v4").is_empty(), "{name}: {:?}", bed.leases("rsbr-v4"));
    }
    // Only the bridge stays in the host.
    let links = bed.host.links();
    assert_eq!(links, ["cnirs0"], "{links:?}");
}

#[test]
fn a_sigkilled_exec_is_cleaned_by_gc_stale() {
    let bed = Bed::new();
    bed.example("bridge.conflist", &[]);
    let (_p, _) = peer(&bed);
    let seen = TempDir::new("ctkill");
    let (mut child, ns) = start_exec(&bed, &seen);
    let _guard = GroupGuard(child.id());
    // SIGKILL to cnitool and its command (its process group): no teardown ran.
    // SAFETY: kill(2) of the process group our child leads.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    wait_within(&mut child, Duration::from_secs(10));
    assert_eq!(bed.cached().len(), 2);
    assert_eq!(bed.leases("rsbr-v4").len(), 2);
    let rows = bed.run(&["list", "rsbr-v4", "--json"]).ok().json();
    let states: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"stale") && states.contains(&"ok"), "{states:?}");
    let out = bed.run(&["gc", "--stale", "rsbr-v4"]);
    out.ok();
    assert!(out.stderr.contains("deleted stale attachment"), "{}", out.stderr);
    assert_eq!(bed.cached().len(), 1, "the live peer stays: {:?}", bed.cached());
    assert_eq!(bed.leases("rsbr-v4").len(), 1);
    assert!(!Path::new(&ns).exists(), "the killed exec's namespace is removed");
    // The peer's veth and the bridge are all that is left in the host.
    assert_eq!(bed.host.links().len(), 2, "{:?}", bed.host.links());
}

#[test]
fn lint_passes_every_conf_example_and_finds_planted_mistakes() {
    let bed = Bed::new();
    let examples: Vec<String> = std::fs::read_dir(workspace_dir().join("conf-examples"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(examples.len() >= 6);
    let mut args = vec!["lint"];
    args.extend(examples.iter().map(String::as_str));
    let out = bed.run(&args);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("error:"), "{}", out.stdout);

    let bad = bed.conf.join("bad.conflist");
    std::fs::write(
        &bad,
        r#"{"cniVersion": "1.0.0", "name": "bad", "plugins": [
  {"type": "bridge", "isGatway": true, "rangeStart": "10.9.0.10", "mtu": 20,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24", "gatewy": "10.9.0.1"}]]}},
  {"type": "macvlan", "master": "eth0", "mode": "bridges", "ipam": {"type": "host-local", "subnet": "10.10.0.0/33"}},
  {"type": "host-local-etcd", "store": {"type": "etcd", "endpoint": ["http://127.0.0.1:2379"]}},
  {"type": "portmap", "snta": true},
  {"type": "nosuch"}]}"#,
    )
    .unwrap();
    let out = bed.run(&["lint", bad.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    for want in [
        "plugins[0].isGatway: unknown key, ignored by the plugin: did you mean \"isGateway\"?",
        "plugins[0].rangeStart: unknown key here, ignored: \"rangeStart\" belongs in ipam",
        "plugins[0].ipam.ranges[0][0].gatewy: unknown key, ignored by the plugin: did you mean \"gateway\"?",
        "plugins[0] (bridge): invalid mtu 20",
        "plugins[1] (macvlan): unknown macvlan mode \"bridges\"",
        "plugins[2].store.endpoint: unknown key, ignored by the plugin: did you mean \"endpoints\"?",
        "plugins[3].snta: unknown key, ignored by the plugin: did you mean \"snat\"?",
        "plugins[4]: failed to find plugin \"nosuch\" in CNI_PATH",
    ] {
        assert!(out.stdout.contains(want), "lint output lacks {want:?}:\n{}", out.stdout);
    }
    // By network name, and a syntax error with its line and column.
    std::fs::write(
        bed.conf.join("syntax.conflist"),
        "{\n  \"name\": \"s\",\n  \"plugins\": [,]\n}\n",
    )
    .unwrap();
    let out = bed.run(&["lint", bed.conf.join("syntax.conflist").to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout.contains("error: line 3 column 15: invalid JSON"),
        "{}",
        out.stdout
    );
    bed.example("bridge.conflist", &[]);
    bed.run(&["lint", "rsbr-v4"]).ok();
    // Warnings only: status 0.
    std::fs::write(
        bed.conf.join("warn.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "w", "plugins": [{"type": "bridge", "x-owner": "team-a"}]}"#,
    )
    .unwrap();
    let out = bed.run(&["lint", bed.conf.join("warn.conflist").to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout.contains("warning: plugins[0].x-owner: unknown key"),
        "{}",
        out.stdout
    );
}

#[test]
fn bad_input_gives_one_clear_line_and_leaves_nothing() {
    let bed = Bed::new();
    bed.example("bridge.conflist", &[]);
    let ctr = Netns::new();
    let p = ctr.path();
    bed.run(&["add", "nope", &p])
        .fails_with("no net configuration with name \"nope\"");
    bed.run_env(&["add", "rsbr-v4", &p], &[("CNI_ARGS", "A=1;B")])
        .fails_with("invalid CNI_ARGS pair \"B\"");
    bed.run_env(&["add", "rsbr-v4", &p], &[("CNI_ARGS", "A=")])
        .fails_with("invalid CNI_ARGS pair \"A=\"");
    bed.run_env(&["add", "rsbr-v4", &p], &[("CAP_ARGS", "{\"portMappings\": [")])
        .fails_with("CAP_ARGS is not valid JSON");
    bed.run_env(&["add", "rsbr-v4", &p], &[("CAP_ARGS", "[1]")])
        .fails_with("CAP_ARGS must be a JSON object, not an array");
    bed.run(&["add", "rsbr-v4", "/etc/passwd"])
        .fails_with("NETNS \"/etc/passwd\" is a regular file, not a network namespace");
    bed.run(&["add", "rsbr-v4", "/run/netns/does-not-exist-ct"])
        .fails_with("does not exist");
    let file = bed.conf.join("bridge.conflist");
    bed.run_env(&["add", "rsbr-v4", &p], &[("NETCONFPATH", file.to_str().unwrap())])
        .fails_with("cannot list the directory");
    let out = bed.run_env(
        &["add", "rsbr-v4", &p],
        &[("CNI_PATH", "/nonexistent-a:/nonexistent-b")],
    );
    out.fails_with("failed to find plugin \"bridge\" in CNI_PATH (searched /nonexistent-a, /nonexistent-b)");
    assert!(out.stderr.contains("rsbr-v4"), "names the network: {}", out.stderr);
    bed.run(&["frobnicate"]).fails_with("unknown command \"frobnicate\"");
    let empty = TempDir::new("ctempty");
    bed.run_env(
        &["add", "rsbr-v4", &p],
        &[("NETCONFPATH", empty.path().to_str().unwrap())],
    )
    .fails_with(&format!(
        "network \"rsbr-v4\": no net configurations found in {} (NETCONFPATH)",
        empty.path().display()
    ));
    // A plugin's own refusal (our plugins also log their error on stderr), and its IPAM's:
    // still one line, cnitool's, with the plugin and its code.
    let mut bad: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace_dir().join("conf-examples/bridge.conflist")).unwrap())
            .unwrap();
    bad["name"] = json!("rsbr-mtu");
    bad["plugins"][0]["mtu"] = json!(20);
    std::fs::write(bed.conf.join("mtu.conflist"), bad.to_string()).unwrap();
    bed.run(&["add", "rsbr-mtu", &p]).fails_with(
        "add rsbr-mtu: plugin type=\"bridge\" failed (add): code 7: invalid mtu 20 (key \"mtu\"): must be 0 (the default) or between 68 and 65535",
    );
    bad["name"] = json!("rsbr-ipam");
    bad["plugins"][0]["mtu"] = json!(1500);
    bad["plugins"][0]["ipam"]["ranges"] = json!([[{"subnet": "10.88.0.0/24", "rangeStart": "10.99.0.5"}]]);
    std::fs::write(bed.conf.join("ipam.conflist"), bad.to_string()).unwrap();
    bed.run(&["add", "rsbr-ipam", &p])
        .fails_with("add rsbr-ipam: plugin type=\"bridge\" failed (add): code 7: ");
    // Nothing left behind.
    assert!(ctr.links().is_empty());
    assert!(bed.host.links().is_empty(), "{:?}", bed.host.links());
    assert!(bed.cached().is_empty());
    assert!(bed.leases("rsbr-v4").is_empty());
}

#[test]
fn an_exec_in_its_own_mount_namespace_is_not_stale_while_it_runs_and_is_cleaned_when_killed() {
    // Under `ip netns exec` (a mount namespace of its own) the exec's namespace mount is seen
    // only there: from outside, its file is an empty regular file.
    let bed = Bed::new();
    bed.example("bridge.conflist", &[]);
    let seen = TempDir::new("ctmnt");
    let script = format!(
        "echo \"$CNITOOL_NETNS\" > {}/ns.tmp && mv {0}/ns.tmp {0}/ns; exec sleep 60",
        seen.path().display()
    );
    let cnitool = bin("cnitool");
    let mut child = Command::new("ip")
        .args(["netns", "exec", bed.host.name()])
        .arg(&cnitool)
        .args(["exec", "rsbr-v4", "--", "sh", "-c", &script])
        .env("NETCONFPATH", bed.conf.path())
        .env("CNI_PATH", format!("{}:{REFERENCE_DIR}", bin_dir().display()))
        .env("CNI_CACHE_DIR", bed.cache.path())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = GroupGuard(child.id());
    let f = seen.join("ns");
    eventually(Duration::from_secs(20), "the exec's command runs", || f.exists());
    let ns = std::fs::read_to_string(&f).unwrap().trim().to_string();
    let rows = bed.run(&["list", "--json"]).ok().json();
    let state = rows[0]["state"].as_str().unwrap().to_string();
    assert!(
        state.starts_with("exec "),
        "a running exec's attachment is not stale: {state}"
    );
    bed.run(&["gc", "--stale", "rsbr-v4"]).ok();
    assert_eq!(bed.cached().len(), 1, "a running exec's attachment stays");
    // SAFETY: kill(2) of the process group our child leads.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    wait_within(&mut child, Duration::from_secs(10));
    // Its namespace file is now an empty file; the DEL runs without it and releases the lease.
    bed.run(&["gc", "--stale", "rsbr-v4"]).ok();
    assert!(bed.cached().is_empty(), "{:?}", bed.cached());
    assert!(bed.leases("rsbr-v4").is_empty(), "{:?}", bed.leases("rsbr-v4"));
    assert!(!Path::new(&ns).exists(), "{ns} removed");
    assert_eq!(bed.host.links(), ["cnirs0"], "the veth went with the namespace");
}
