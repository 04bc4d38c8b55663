//! The multicall build: one program installed under the three names as hard links, where
//! bridge and macvlan run host-local in-process when `CNI_PATH` resolves it to their own file,
//! against the same program copied apart (three files), where they execute it. Both ways give
//! the same results, error JSONs, stderr and lease stores, call by call, failures included.

use std::path::{Path, PathBuf};

use cni_tests::{bin, Cni, Netns, Output, TempDir};
use serde_json::{json, Value};

/// How the plugins are installed in a world's `CNI_PATH`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Layout {
    /// One file under the three names (`make install`): IPAM in-process.
    Linked,
    /// Three separate files: IPAM executed.
    Apart,
}

/// A private host namespace, a container namespace, a lease store and a plugin directory.
struct World {
    layout: Layout,
    bins: TempDir,
    host: Netns,
    ctr: Netns,
    data: TempDir,
}

impl World {
    fn new(layout: Layout) -> World {
        let bins = TempDir::new("mc-bin");
        match layout {
            Layout::Linked => {
                std::fs::copy(bin("bridge"), bins.join("bridge")).unwrap();
                for n in ["macvlan", "host-local"] {
                    std::fs::hard_link(bins.join("bridge"), bins.join(n)).unwrap();
                }
            }
            Layout::Apart => {
                for n in ["bridge", "macvlan", "host-local"] {
                    std::fs::copy(bin(n), bins.join(n)).unwrap();
                }
            }
        }
        let host = Netns::new();
        // The macvlan master: one end of a veth pair, both up.
        host.ip(&["link", "add", "m0", "type", "veth", "peer", "name", "m1"]);
        host.ip(&["link", "set", "m0", "up"]);
        host.ip(&["link", "set", "m1", "up"]);
        World {
            layout,
            bins,
            host,
            ctr: Netns::new(),
            data: TempDir::new("mc-data"),
        }
    }

    fn conf(&self, plugin: &str) -> Value {
        let ipam = json!({"type": "host-local", "dataDir": self.data.path(),
                          "ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]});
        match plugin {
            "bridge" => json!({"cniVersion": "1.0.0", "name": "mcnet", "type": "bridge",
                               "bridge": "mcbr0", "isGateway": true, "ipam": ipam}),
            _ => json!({"cniVersion": "1.0.0", "name": "mcnet", "type": "macvlan",
                        "master": "m0", "mode": "bridge", "ipam": ipam}),
        }
    }

    fn cni(&self, plugin: &str, command: &str, id: &str, conf: &Value) -> Cni {
        Cni::new(self.bins.join(plugin))
            .command(command)
            .container_id(id)
            // One container namespace, an interface per attachment.
            .ifname(&format!("if-{id}"))
            .netns(self.ctr.path())
            .host(&self.host)
            .env("CNI_PATH", &self.bins.path().to_string_lossy())
            .unset("CNI_RS_TRACE")
            .config(conf)
    }

    /// This world's paths replaced by placeholders.
    fn norm(&self, s: &str) -> String {
        s.replace(&self.data.path().to_string_lossy().into_owned(), "<data>")
            .replace(&self.bins.path().to_string_lossy().into_owned(), "<bins>")
            .replace(&self.ctr.path(), "<netns>")
    }

    /// The leases, pointers and index: the store without the record of the last ADD (which
    /// undoing a failed ADD consumes).
    fn held(&self) -> Vec<(String, String)> {
        self.store()
            .into_iter()
            .filter(|(n, _)| !n.ends_with(".last_reserved_undo"))
            .collect()
    }

    /// Every file of the lease store (pointers, index and leases), with its contents.
    fn store(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        walk(self.data.path(), self.data.path(), &mut v);
        v.sort();
        v
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p: PathBuf = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            out.push((format!("{rel}/"), String::new()));
            walk(root, &p, out);
        } else if rel.ends_with(".stamp") {
            // The index's freshness stamp holds times.
            out.push((rel, "<times>".into()));
        } else if rel.rsplit('/').next().is_some_and(|n| n.starts_with(".claim-")) {
            // A claim record holds the random token of the call that wrote it.
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
            let norm: Vec<&str> = text
                .lines()
                .map(|l| if l.starts_with("token ") { "token <token>" } else { l })
                .collect();
            out.push((rel, norm.join("\n")));
        } else {
            out.push((
                rel,
                String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned(),
            ));
        }
    }
}

/// What must be the same both ways: the exit code, the result's addresses, routes and DNS (or
/// the whole error JSON), the stderr, and the lease store after the call.
fn seen(w: &World, out: &Output) -> Value {
    let stdout = if out.success() && out.stdout.is_object() {
        let r = &out.stdout;
        json!({"cniVersion": r["cniVersion"], "ips": r["ips"], "routes": r["routes"], "dns": r["dns"],
               "interfaces": r["interfaces"].as_array().map(|a| a.len())})
    } else {
        serde_json::from_str(&w.norm(&out.raw_stdout)).unwrap_or(Value::Null)
    };
    json!({"code": out.code, "stdout": stdout, "stderr": w.norm(&out.stderr), "store": w.store()})
}

/// Runs one call in both worlds and asserts they saw the same; returns the linked world's.
fn both(ws: &[World; 2], plugin: &str, command: &str, id: &str, edit: impl Fn(&World, Cni) -> Cni) -> Output {
    both_each(ws, plugin, command, id, |_, w, c| edit(w, c)).remove(0)
}

/// [`both`], with the world's index; returns both outputs.
fn both_each(
    ws: &[World; 2],
    plugin: &str,
    command: &str,
    id: &str,
    edit: impl Fn(usize, &World, Cni) -> Cni,
) -> Vec<Output> {
    let outs: Vec<(Output, Value)> = ws
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let out = edit(i, w, w.cni(plugin, command, id, &w.conf(plugin))).run();
            let s = seen(w, &out);
            (out, s)
        })
        .collect();
    assert_eq!(
        outs[0].1, outs[1].1,
        "{plugin} {command} {id}: in-process (left) and executed (right) IPAM differ"
    );
    outs.into_iter().map(|o| o.0).collect()
}

/// With `CNI_RS_TRACE=1` the in-process host-local traces in its own lane, `<pid>-host-local`;
/// executed, it is a process of its own (a second pid).
fn ipam_runs_in_process(w: &World, plugin: &str) -> bool {
    let out = w
        .cni(plugin, "ADD", "probe", &w.conf(plugin))
        .env("CNI_RS_TRACE", "1")
        .run();
    out.expect_ok();
    w.cni(plugin, "DEL", "probe", &w.conf(plugin)).run().expect_ok();
    let who: std::collections::BTreeSet<String> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("TRACE "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let lanes = who.iter().filter(|w| w.ends_with("-host-local")).count();
    let pids = who.iter().filter(|w| w.parse::<u32>().is_ok()).count();
    match (lanes, pids) {
        (1, 1) => true,
        // Ours executed prints its own lines under its own pid; the reference none.
        (0, 1 | 2) => false,
        _ => panic!("unexpected trace lanes {who:?} in {}", out.stderr),
    }
}

fn worlds() -> [World; 2] {
    [World::new(Layout::Linked), World::new(Layout::Apart)]
}

#[test]
fn bridge_in_process_ipam_is_the_executed_one() {
    let ws = worlds();
    assert!(ipam_runs_in_process(&ws[0], "bridge"), "{:?}", ws[0].layout);
    assert!(!ipam_runs_in_process(&ws[1], "bridge"), "{:?}", ws[1].layout);

    let adds = both_each(&ws, "bridge", "ADD", "c1", |_, _, c| c);
    let r = adds[0].expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.77.0.3/24", "{r}");
    assert_eq!(r["ips"][1]["address"], "fd77::3/64", "{r}");
    // CHECK against each world's own result (MACs and names are its own).
    for out in both_each(&ws, "bridge", "CHECK", "c1", |i, w, c| {
        let mut conf = w.conf("bridge");
        conf["prevResult"] = adds[i].stdout.clone();
        c.config(&conf)
    }) {
        out.expect_ok();
    }
    // IPAM refuses (an address outside the subnet): its error, as it reported it.
    both(&ws, "bridge", "ADD", "c2", |_, c| c.args("IP=10.99.0.5")).expect_error(4);
    // IPAM panics: the same code-100 error and stderr.
    let out = both(&ws, "bridge", "ADD", "c3", |_, c| {
        c.env("CNI_RS_FAULT", "host-local:add")
    });
    out.expect_error(100);
    assert!(out.stderr.contains("panic: "), "{}", out.stderr);
    // bridge fails after IPAM, and while IPAM runs: the lease and the pointers are put back.
    let before = ws[0].held();
    for fault in ["bridge:after-ipam", "bridge:ipam-running"] {
        both(&ws, "bridge", "ADD", "c4", |_, c| c.env("CNI_RS_FAULT", fault)).expect_error(100);
        assert_eq!(
            ws[0].held(),
            before,
            "{fault}: the failed ADD left the store as it found it"
        );
    }
    both(&ws, "bridge", "DEL", "c1", |_, c| c).expect_ok();
    assert!(
        !ws[0].store().iter().any(|(n, _)| n.ends_with("10.77.0.3")),
        "{:?}",
        ws[0].store()
    );
    both(&ws, "bridge", "DEL", "c1", |_, c| c).expect_ok();
}

#[test]
fn macvlan_in_process_ipam_is_the_executed_one() {
    let ws = worlds();
    assert!(ipam_runs_in_process(&ws[0], "macvlan"));
    assert!(!ipam_runs_in_process(&ws[1], "macvlan"));
    let r = both(&ws, "macvlan", "ADD", "c1", |_, c| c).expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.77.0.3/24", "{r}");
    both(&ws, "macvlan", "ADD", "c2", |_, c| c.args("IP=10.99.0.5")).expect_error(4);
    both(&ws, "macvlan", "ADD", "c3", |_, c| {
        c.env("CNI_RS_FAULT", "host-local:add")
    })
    .expect_error(100);
    let before = ws[0].held();
    for fault in ["macvlan:after-ipam", "macvlan:ipam-running"] {
        both(&ws, "macvlan", "ADD", "c4", |_, c| c.env("CNI_RS_FAULT", fault)).expect_error(100);
        assert_eq!(ws[0].held(), before, "{fault}");
    }
    both(&ws, "macvlan", "DEL", "c1", |_, c| c).expect_ok();
}

/// A `host-local` in `CNI_PATH` that is not the running file (here the reference plugin,
/// next to our linked bridge) is executed: the multicall build does not capture the name.
#[test]
fn another_host_local_is_executed() {
    let Some(reference) = cni_tests::reference_bin("host-local") else {
        return;
    };
    let w = World::new(Layout::Linked);
    std::fs::remove_file(w.bins.join("host-local")).unwrap();
    std::fs::copy(reference, w.bins.join("host-local")).unwrap();
    assert!(!ipam_runs_in_process(&w, "bridge"));
    let r = w.cni("bridge", "ADD", "c1", &w.conf("bridge")).run().expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.77.0.3/24", "{r}");
    w.cni("bridge", "DEL", "c1", &w.conf("bridge")).run().expect_ok();
}
