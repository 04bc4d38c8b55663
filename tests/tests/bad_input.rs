//! Bad input: a table of malformed calls per plugin; each must fail with the spec's error
//! JSON, the right code, a message naming what is wrong, and change nothing on the node. The
//! plugins are run as a runtime runs them, inside private "host" namespaces, with private lease
//! stores; nothing here touches the machine's own interfaces, addresses, routes or firewall.
//!
//! Needs root and `cargo build --workspace`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cni_tests::node::{diff, snapshot, Snapshot};
use cni_tests::{assert_no_failures, lease_files, merged, Cni, Netns, Output, TempDir, SUPPORTED_VERSIONS};
use serde_json::{json, Value};

/// What a malformed call must give.
#[derive(Debug, Clone)]
enum Expect {
    /// The spec's error JSON with this code, a message holding every needle.
    Error(u64, Vec<String>),
    /// No `CNI_COMMAND`: the reference prints its "about" text on stderr and exits 0 with
    /// nothing on stdout; so do we.
    About,
    /// A DEL of a config that went bad after ADD: it must still tear down (here: nothing),
    /// exit 0 with nothing on stdout.
    Deleted,
}

struct Case {
    name: String,
    cni: Cni,
    expect: Expect,
}

fn err(code: u64, needles: &[&str]) -> Expect {
    Expect::Error(code, needles.iter().map(|s| s.to_string()).collect())
}

/// One plugin's world for the bad-input table: a host namespace, an empty container
/// namespace, a lease store, a valid config and a container `c0` already set up with it.
struct Bed {
    plugin: &'static str,
    host: Netns,
    ctr: Netns,
    _ctr0: Netns,
    data: TempDir,
    conf: Value,
    /// The result of the ADD of `c0`, for CHECK cases.
    c0_result: Value,
}

impl Bed {
    fn new(plugin: &'static str) -> Bed {
        let host = Netns::new();
        let data = TempDir::new(&format!("hard-{plugin}"));
        let ipam =
            |subnet: &str| json!({"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": subnet}]]});
        let conf = match plugin {
            "host-local" => json!({
                "cniVersion": "1.0.0", "name": "hardhl", "type": "host-local", "ipam": ipam("10.91.0.0/24")
            }),
            "bridge" => json!({
                "cniVersion": "1.0.0", "name": "hardbr", "type": "bridge", "bridge": "hbr0",
                "isGateway": true, "ipMasq": true, "ipam": ipam("10.92.0.0/24")
            }),
            "macvlan" => {
                host.ip(&["link", "add", "m0", "type", "veth", "peer", "name", "m1"]);
                host.ip(&["link", "set", "m0", "up"]);
                host.ip(&["link", "set", "m1", "up"]);
                json!({
                    "cniVersion": "1.0.0", "name": "hardmv", "type": "macvlan", "master": "m0",
                    "ipam": ipam("10.93.0.0/24")
                })
            }
            _ => unreachable!(),
        };
        let ctr0 = Netns::new();
        let c0_result = Cni::call(plugin, &host, "ADD", "c0", Some(&ctr0.path()), &conf)
            .run()
            .expect_ok();
        Bed {
            plugin,
            ctr: Netns::new(),
            _ctr0: ctr0,
            host,
            data,
            conf,
            c0_result,
        }
    }

    /// A valid ADD of container `ctr1` into the empty container namespace.
    fn base(&self) -> Cni {
        Cni::call(
            self.plugin,
            &self.host,
            "ADD",
            "ctr1",
            Some(&self.ctr.path()),
            &self.conf,
        )
    }

    /// The base call with `extra` merged into the config.
    fn with(&self, extra: Value) -> Cni {
        self.base().config(&merged(&self.conf, extra))
    }

    /// The base call with `extra` merged into the config's `ipam` section.
    fn with_ipam(&self, extra: Value) -> Cni {
        self.with(json!({ "ipam": extra }))
    }

    fn raw(&self, bytes: impl Into<Vec<u8>>) -> Cni {
        self.base().stdin(bytes)
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(&self.host, &self.ctr, self.data.path())
    }
}

fn case(name: impl Into<String>, cni: Cni, expect: Expect) -> Case {
    Case {
        name: name.into(),
        cni,
        expect,
    }
}

/// The cases every plugin shares: the skeleton's checks of stdin and environment, and the
/// IPAM section that host-local reads (through delegation for bridge and macvlan).
fn common_cases(b: &Bed) -> Vec<Case> {
    let conf_text = b.conf.to_string();
    let mut huge = b.conf.clone();
    huge["args"] = json!({ "pad": "x".repeat(5 << 20) });
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let deep_obj = conf_text.replacen(
        "\"ipam\":{",
        &format!(
            "\"ipam\":{{\"deep\":{}1{},",
            "{\"a\":".repeat(100_000),
            "}".repeat(100_000)
        ),
        1,
    );
    assert_ne!(deep_obj, conf_text);
    let deep_in_args = format!(
        "{{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"args\":{}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let raw_nul = conf_text.replacen("\"name\":\"", "\"name\":\"ab\0", 1);
    let mut bad_utf8 = conf_text.clone().into_bytes();
    let at = conf_text.find("\"name\":\"").unwrap() + 8;
    bad_utf8.splice(at..at, [0xff, 0xfe, 0xc3]);
    // As in the reference's Go decoder, a repeated key is no error: the later one wins.
    let dup = format!(
        "{},\"cniVersion\":\"9.9.9\"}}",
        conf_text.trim_end().strip_suffix('}').unwrap()
    );
    let name = b.conf["name"].as_str().unwrap().to_string();
    let checked_prev = merged(&b.conf, json!({ "prevResult": b.c0_result.clone() }));

    vec![
        // stdin
        case("stdin not JSON", b.raw("this is not json"), err(6, &["not valid JSON"])),
        case("stdin empty", b.raw(""), err(6, &["no network config"])),
        case("stdin whitespace only", b.raw(" \n\t "), err(6, &["no network config"])),
        case(
            "stdin truncated JSON",
            b.raw(&conf_text[..conf_text.len() / 2]),
            err(6, &["not valid JSON"]),
        ),
        case(
            "stdin > 4 MiB",
            b.raw(huge.to_string()),
            err(6, &["larger than 4194304 bytes"]),
        ),
        case("deeply nested array", b.raw(deep), err(6, &[])),
        case(
            "deeply nested object in ipam",
            b.raw(deep_obj),
            err(6, &["recursion limit"]),
        ),
        case("deeply nested args", b.raw(deep_in_args), err(6, &["recursion limit"])),
        case(
            "raw NUL byte in a string",
            b.raw(raw_nul),
            err(6, &["control character"]),
        ),
        case("invalid UTF-8", b.raw(bad_utf8), err(6, &["unicode"])),
        case("top-level array", b.raw("[1, 2]"), err(6, &[])),
        case("top-level null", b.raw("null"), err(6, &[])),
        case("top-level string", b.raw("\"cni\""), err(6, &[])),
        case("top-level number", b.raw("42"), err(6, &[])),
        case(
            "trailing garbage",
            b.raw(format!("{conf_text} x")),
            err(6, &["not valid JSON"]),
        ),
        case("duplicate key, the later wins", b.raw(dup), err(1, &["9.9.9"])),
        // wrong types of common keys
        case(
            "cniVersion is a number",
            b.with(json!({"cniVersion": 1.0})),
            err(6, &["cniVersion"]),
        ),
        case("name is a number", b.with(json!({"name": 7})), err(6, &["name"])),
        case(
            "ipam is a string",
            b.with(json!({"ipam": "host-local"})),
            err(6, &["ipam"]),
        ),
        case("dns is a string", b.with(json!({"dns": "10.0.0.53"})), err(6, &["dns"])),
        // versions
        case(
            "unknown cniVersion",
            b.with(json!({"cniVersion": "9.9.9"})),
            err(1, &["9.9.9"]),
        ),
        case(
            "cniVersion 1.0",
            b.with(json!({"cniVersion": "1.0"})),
            err(1, &["\"1.0\""]),
        ),
        case(
            "CHECK with cniVersion 0.3.1",
            b.with(json!({"cniVersion": "0.3.1"})).command("CHECK"),
            err(1, &["0.3.1", "CHECK"]),
        ),
        case(
            "GC with cniVersion 1.0.0",
            b.base().command("GC"),
            err(1, &["1.0.0", "GC"]),
        ),
        case(
            "STATUS with cniVersion 1.0.0",
            b.base().command("STATUS"),
            err(1, &["1.0.0", "STATUS"]),
        ),
        // CNI_COMMAND
        case(
            "CNI_COMMAND unknown",
            b.base().command("FOO"),
            err(4, &["CNI_COMMAND", "FOO"]),
        ),
        case(
            "CNI_COMMAND lower case",
            b.base().command("add"),
            err(4, &["CNI_COMMAND", "add"]),
        ),
        case("CNI_COMMAND empty", b.base().command(""), err(4, &["CNI_COMMAND"])),
        case("CNI_COMMAND missing", b.base().unset("CNI_COMMAND"), Expect::About),
        // other CNI_* variables
        case(
            "CNI_CONTAINERID missing",
            b.base().unset("CNI_CONTAINERID"),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "CNI_IFNAME missing",
            b.base().unset("CNI_IFNAME"),
            err(4, &["CNI_IFNAME"]),
        ),
        case("CNI_NETNS missing", b.base().unset("CNI_NETNS"), err(4, &["CNI_NETNS"])),
        case("CNI_PATH missing", b.base().unset("CNI_PATH"), err(4, &["CNI_PATH"])),
        case("CNI_PATH empty", b.base().env("CNI_PATH", ""), err(4, &["CNI_PATH"])),
        case(
            "CNI_IFNAME 16 bytes",
            b.base().ifname("eth0123456789abc"),
            err(4, &["CNI_IFNAME", "eth0123456789abc"]),
        ),
        case(
            "CNI_IFNAME with /",
            b.base().ifname("a/b"),
            err(4, &["CNI_IFNAME", "a/b"]),
        ),
        case("CNI_IFNAME ..", b.base().ifname(".."), err(4, &["CNI_IFNAME"])),
        case(
            "CNI_IFNAME with space",
            b.base().ifname("eth 0"),
            err(4, &["CNI_IFNAME"]),
        ),
        case(
            "CNI_IFNAME with newline",
            b.base().ifname("eth0\n"),
            err(4, &["CNI_IFNAME"]),
        ),
        case(
            "CNI_IFNAME with colon",
            b.base().ifname("eth0:1"),
            err(4, &["CNI_IFNAME"]),
        ),
        case(
            "CNI_CONTAINERID with ../",
            b.base().container_id("../../etc/passwd"),
            err(4, &["CNI_CONTAINERID", "../../etc/passwd"]),
        ),
        case(
            "CNI_CONTAINERID with /",
            b.base().container_id("a/b"),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "CNI_CONTAINERID leading -",
            b.base().container_id("-rf"),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "CNI_CONTAINERID with newline",
            b.base().container_id("c1\nx"),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "CNI_CONTAINERID with $()",
            b.base().container_id("c$(id)"),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "CNI_ARGS pair without =",
            b.base().args("junk"),
            err(4, &["CNI_ARGS", "junk"]),
        ),
        case("CNI_ARGS empty key", b.base().args("=x"), err(4, &["CNI_ARGS"])),
        // the network name: the lease store's directory, and part of firewall names
        case(
            "network name ../..",
            b.with(json!({"name": "../../etc"})),
            err(7, &["network name", "../../etc"]),
        ),
        case(
            "network name a/b",
            b.with(json!({"name": "a/b"})),
            err(7, &["network name", "a/b"]),
        ),
        case(
            "network name .hidden",
            b.with(json!({"name": ".hidden"})),
            err(7, &["network name"]),
        ),
        case(
            "network name with ;",
            b.with(json!({"name": "n;reboot"})),
            err(7, &["network name"]),
        ),
        case(
            "network name with NUL",
            b.with(json!({"name": "ab\u{0}c"})),
            err(7, &["network name"]),
        ),
        // the ipam section (host-local's; delegated by bridge and macvlan)
        case(
            "subnet with host bits",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.5/24"}]]})),
            err(7, &["subnet", "10.94.0.5/24", "host bits"]),
        ),
        case(
            "subnet not a CIDR",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/33"}]]})),
            err(7, &["subnet", "10.94.0.0/33"]),
        ),
        case(
            "subnet too small",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/31"}]]})),
            err(7, &["subnet", "too small"]),
        ),
        case(
            "rangeStart outside its subnet",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24", "rangeStart": "10.95.0.10"}]]})),
            err(7, &["rangeStart", "10.95.0.10", "outside"]),
        ),
        case(
            "rangeEnd outside its subnet",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24", "rangeEnd": "10.94.1.10"}]]})),
            err(7, &["rangeEnd", "10.94.1.10", "outside"]),
        ),
        case(
            "rangeEnd before rangeStart",
            b.with_ipam(
                json!({"ranges": [[{"subnet": "10.94.0.0/24", "rangeStart": "10.94.0.50", "rangeEnd": "10.94.0.10"}]]}),
            ),
            err(7, &["rangeEnd", "rangeStart"]),
        ),
        case(
            "gateway of the other family",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24", "gateway": "fd00::1"}]]})),
            err(7, &["gateway", "fd00::1"]),
        ),
        case(
            "rangeStart not an address",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24", "rangeStart": "ten"}]]})),
            err(7, &["rangeStart", "ten"]),
        ),
        case(
            "empty range set",
            b.with_ipam(json!({"ranges": [[]]})),
            err(7, &["ranges[0]", "empty"]),
        ),
        case(
            "no ranges at all",
            b.with_ipam(json!({"ranges": null})),
            err(7, &["no IP ranges"]),
        ),
        case(
            "overlapping range sets",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24"}], [{"subnet": "10.94.0.0/16"}]]})),
            err(7, &["overlaps"]),
        ),
        case(
            "range set mixing families",
            b.with_ipam(json!({"ranges": [[{"subnet": "10.94.0.0/24"}, {"subnet": "fd00:94::/64"}]]})),
            err(7, &["families"]),
        ),
        case(
            "ranges of wrong type",
            b.with_ipam(json!({"ranges": 5})),
            err(6, &["ranges"]),
        ),
        case(
            "route dst not a CIDR",
            b.with_ipam(json!({"routes": [{"dst": "default"}]})),
            err(6, &["routes", "dst"]),
        ),
        case(
            "route mtu negative",
            b.with_ipam(json!({"routes": [{"dst": "0.0.0.0/0", "mtu": -1}]})),
            err(7, &["-1 (key \"ipam.routes[0].mtu\")"]),
        ),
        case(
            "dataDir of wrong type",
            b.with_ipam(json!({"dataDir": 5})),
            err(6, &["dataDir"]),
        ),
        case(
            "resolvConf missing",
            b.with_ipam(json!({"resolvConf": "/nonexistent/resolv.conf"})),
            err(5, &["/nonexistent/resolv.conf"]),
        ),
        case(
            "runtimeConfig.ips not an address",
            b.with(json!({"runtimeConfig": {"ips": ["10.91.0.300"]}})),
            err(7, &["runtimeConfig.ips[0]", "10.91.0.300"]),
        ),
        case(
            "args.cni.ips not an address",
            b.with(json!({"args": {"cni": {"ips": ["nope"]}}})),
            err(7, &["args.cni.ips[0]", "nope"]),
        ),
        case(
            "CNI_ARGS IP not an address",
            b.base().args("IgnoreUnknown=1;IP=999.1.1.1"),
            err(4, &["CNI_ARGS", "999.1.1.1"]),
        ),
        case(
            "CNI_ARGS IP outside every range",
            b.base().args("IgnoreUnknown=1;IP=10.99.0.5"),
            err(7, &["10.99.0.5"]),
        ),
        case(
            "CNI_ARGS unknown key",
            b.base().args("FOO=bar"),
            err(4, &["CNI_ARGS", "FOO=bar", "IgnoreUnknown"]),
        ),
        // other verbs with bad input
        case(
            "DEL with non-JSON",
            b.raw("{{{").command("DEL"),
            err(6, &["not valid JSON"]),
        ),
        case(
            "DEL with container id ../",
            b.base().command("DEL").container_id(".."),
            err(4, &["CNI_CONTAINERID"]),
        ),
        case(
            "DEL with network name ../",
            b.with(json!({"name": ".."})).command("DEL"),
            err(7, &["network name"]),
        ),
        case(
            "GC with valid-attachments of wrong type",
            b.with(json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": "c0"}))
                .command("GC"),
            err(6, &["cni.dev/valid-attachments"]),
        ),
        case(
            "GC with attachment without containerID",
            b.with(json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"ifname": "eth0"}]}))
                .command("GC"),
            err(6, &["containerID"]),
        ),
        case(
            "CHECK of a container that has nothing",
            b.base().command("CHECK").config(&checked_prev).container_id("nobody"),
            err(104, &[]),
        ),
        case(
            "ADD into a network dir planted as a file",
            b.with(json!({"name": format!("{name}-file")})),
            err(5, &[&format!("{name}-file")]),
        ),
    ]
}

/// Runs every case; returns the description of each failing one.
fn run_cases(b: &Bed, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    let mut before = b.snapshot();
    let n = cases.len();
    for c in cases {
        let started = Instant::now();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.cni.run()));
        let mut problems = Vec::new();
        match out {
            Err(_) => problems.push("the call's output could not be read (see the panic above)".to_string()),
            Ok(out) => {
                if out.stderr.to_lowercase().contains("panic") {
                    problems.push(format!("panicked: {}", out.stderr.trim()));
                }
                match &c.expect {
                    Expect::About => {
                        if out.code != Some(0) || !out.raw_stdout.trim().is_empty() {
                            problems.push(format!("exit {:?}, stdout {:?}", out.code, out.raw_stdout));
                        }
                        if !out.stderr.contains("CNI protocol versions supported") {
                            problems.push(format!("no about text on stderr: {:?}", out.stderr));
                        }
                    }
                    Expect::Deleted => {
                        if out.code != Some(0) || !out.raw_stdout.trim().is_empty() {
                            problems.push(format!("exit {:?}, stdout {:?}", out.code, out.raw_stdout));
                        }
                    }
                    Expect::Error(code, needles) => problems.extend(check_error(&out, *code, needles)),
                }
            }
        }
        let after = b.snapshot();
        if after != before {
            problems.push(format!("changed the node:\n{}", diff(&before, &after)));
            // Undo what a call that should have failed made, so the next cases start clean.
            let _ = b.base().command("DEL").run();
            before = b.snapshot();
        }
        if started.elapsed() > Duration::from_secs(10) {
            problems.push(format!("took {:?}", started.elapsed()));
        }
        if !problems.is_empty() {
            failures.push(format!("[{}] {}: {}", b.plugin, c.name, problems.join("; ")));
        }
    }
    eprintln!("{}: {n} bad-input cases, {} failing", b.plugin, failures.len());
    failures
}

/// The spec's error JSON with `code`, a message holding every needle, exit status 1.
fn check_error(out: &Output, code: u64, needles: &[String]) -> Vec<String> {
    let mut p = Vec::new();
    if out.code != Some(1) {
        p.push(format!("exit status {:?} (want 1)", out.code));
    }
    let Some(obj) = out.stdout.as_object() else {
        p.push(format!("stdout is not an error object: {:?}", out.raw_stdout));
        return p;
    };
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let allowed: BTreeSet<&str> = ["cniVersion", "code", "msg", "details"].into();
    if !keys.is_subset(&allowed) || !keys.contains("code") || !keys.contains("msg") || !keys.contains("cniVersion") {
        p.push(format!("error JSON keys {keys:?}"));
    }
    if !obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .is_some_and(|v| SUPPORTED_VERSIONS.contains(&v))
    {
        p.push(format!("error cniVersion {:?}", obj.get("cniVersion")));
    }
    let msg = out.error_msg();
    if out.error_code() != Some(code) {
        p.push(format!("code {:?} (want {code}), msg {msg:?}", out.error_code()));
    }
    if msg.trim().is_empty() {
        p.push("empty msg".into());
    }
    for n in needles {
        if !msg.contains(n.as_str()) {
            p.push(format!("msg {msg:?} does not name {n:?}"));
        }
    }
    if out.raw_stdout.trim().lines().count() != 1 {
        p.push(format!("stdout holds more than one JSON line: {:?}", out.raw_stdout));
    }
    p
}

/// Cases for the plugins that open `CNI_NETNS` (bridge and macvlan).
fn netns_cases(b: &Bed) -> Vec<Case> {
    let no_ipam = merged(&b.conf, json!({"ipam": null}));
    let base = || b.base().config(&no_ipam);
    vec![
        case(
            "CNI_NETNS a regular file",
            b.base().netns("/etc/hostname"),
            err(4, &["CNI_NETNS", "/etc/hostname"]),
        ),
        case("CNI_NETNS a directory", b.base().netns("/"), err(4, &["CNI_NETNS"])),
        case(
            "CNI_NETNS a mount namespace",
            b.base().netns("/proc/self/ns/mnt"),
            err(4, &["CNI_NETNS", "not a network namespace"]),
        ),
        case(
            "CNI_NETNS does not exist",
            b.base().netns("/run/netns/does-not-exist"),
            err(3, &["/run/netns/does-not-exist"]),
        ),
        case(
            "CNI_NETNS relative",
            b.base().netns("no-such-ns"),
            err(3, &["no-such-ns"]),
        ),
        case(
            "IPAM type not in CNI_PATH",
            b.with_ipam(json!({"type": "no-such-ipam"})),
            err(7, &["no-such-ipam"]),
        ),
        case(
            "IPAM type with a path",
            b.with_ipam(json!({"type": "../../../bin/sh"})),
            err(7, &["../../../bin/sh"]),
        ),
        case(
            "IPAM type not in a restricted CNI_PATH",
            b.base().env("CNI_PATH", "/nonexistent"),
            err(7, &["host-local"]),
        ),
        case(
            "CHECK with a prevResult that is not a result",
            base()
                .command("CHECK")
                .config(&merged(&no_ipam, json!({"prevResult": "garbage"}))),
            err(6, &["prevResult"]),
        ),
        case(
            "CHECK with a prevResult whose ips name a missing interface",
            base().command("CHECK").config(&merged(
                &no_ipam,
                json!({"prevResult": {"cniVersion": "1.0.0", "ips": [{"interface": 7, "address": "10.0.0.2/24"}]}}),
            )),
            err(6, &["interface index 7"]),
        ),
        case(
            "CHECK with a prevResult address that is not a CIDR",
            base().command("CHECK").config(&merged(
                &no_ipam,
                json!({"prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2"}]}}),
            )),
            err(6, &["prevResult", "address"]),
        ),
        case(
            "CHECK without prevResult",
            base().command("CHECK"),
            err(7, &["prevResult"]),
        ),
        case(
            "CNI_ARGS MAC invalid",
            b.base().args("IgnoreUnknown=1;MAC=zz:zz:zz:zz:zz:zz"),
            err(7, &["CNI_ARGS MAC", "zz:zz:zz:zz:zz:zz"]),
        ),
        case(
            "DEL with CNI_ARGS MAC invalid",
            b.base().command("DEL").args("IgnoreUnknown=1;MAC=zz"),
            Expect::Deleted,
        ),
        case(
            "DEL with runtimeConfig.mac invalid",
            b.with(json!({"runtimeConfig": {"mac": "02:00"}})).command("DEL"),
            Expect::Deleted,
        ),
        case(
            "runtimeConfig.mac invalid",
            b.with(json!({"runtimeConfig": {"mac": "02:00:00:00:00"}})),
            err(7, &["runtimeConfig.mac", "02:00:00:00:00"]),
        ),
        case(
            "runtimeConfig.mac multicast",
            b.with(json!({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}})),
            err(7, &["runtimeConfig.mac", "01:00:5e:00:00:01"]),
        ),
        case(
            "runtimeConfig.mac with a sign",
            b.with(json!({"runtimeConfig": {"mac": "+2:00:00:00:00:01"}})),
            err(7, &["runtimeConfig.mac", "+2:00:00:00:00:01"]),
        ),
        case(
            "runtimeConfig.mac a number",
            b.with(json!({"runtimeConfig": {"mac": 42}})),
            err(7, &["runtimeConfig.mac"]),
        ),
    ]
}

fn host_local_cases(b: &Bed) -> Vec<Case> {
    vec![
        case("ipam missing", b.with(json!({"ipam": null})), err(7, &["ipam"])),
        case("name missing", b.with(json!({"name": null})), err(7, &["name"])),
        case("name empty", b.with(json!({"name": ""})), err(7, &["name"])),
        case(
            "two CNI_ARGS IPs for one range set",
            b.base().args("IP=10.91.0.7,10.91.0.8"),
            err(7, &["10.91.0.8"]),
        ),
        case(
            "CNI_ARGS IgnoreUnknown not a boolean",
            b.base().args("IgnoreUnknown=maybe"),
            err(4, &["IgnoreUnknown", "maybe"]),
        ),
        case(
            "CNI_ARGS IP==",
            b.base().args("IP=10.91.0.7=1"),
            err(4, &["CNI_ARGS", "IP=10.91.0.7=1"]),
        ),
        case(
            "cniVersion 0.2.0 with two IPv4 range sets",
            b.with(json!({"cniVersion": "0.2.0", "ipam": {"ranges": [[{"subnet": "10.91.0.0/24"}], [{"subnet": "10.96.0.0/24"}]]}})),
            err(7, &["0.2.0"]),
        ),
        case(
            "runtimeConfig.ipRanges with host bits",
            b.with(json!({"runtimeConfig": {"ipRanges": [[{"subnet": "10.97.0.1/24"}]]}})),
            err(7, &["runtimeConfig.ipRanges[0][0].subnet", "10.97.0.1/24"]),
        ),
        case(
            "runtimeConfig.ipRanges of wrong type",
            b.with(json!({"runtimeConfig": {"ipRanges": {"subnet": "10.97.0.0/24"}}})),
            err(6, &["runtimeConfig.ipRanges"]),
        ),
        case(
            "flat subnet with host bits",
            b.with_ipam(json!({"ranges": null, "subnet": "10.97.0.9/16"})),
            err(7, &["ipam.subnet", "10.97.0.9/16"]),
        ),
        case(
            "dataDir is a file",
            b.with_ipam(json!({"dataDir": "/etc/hostname"})),
            err(5, &["/etc/hostname"]),
        ),
    ]
}

fn macvlan_cases(b: &Bed) -> Vec<Case> {
    vec![
        case(
            "master missing",
            b.with(json!({"master": "nosuch0"})),
            err(7, &["master", "nosuch0"]),
        ),
        case(
            "master too long",
            b.with(json!({"master": "m0123456789abcdef"})),
            err(7, &["master", "m0123456789abcdef"]),
        ),
        case(
            "master with /",
            b.with(json!({"master": "../m0"})),
            err(7, &["master", "../m0"]),
        ),
        case(
            "master with NUL",
            b.with(json!({"master": "m0\u{0}"})),
            err(7, &["master"]),
        ),
        case(
            "master unset and no default route",
            b.with(json!({"master": null})),
            err(7, &["master", "default route"]),
        ),
        case(
            "master of wrong type",
            b.with(json!({"master": ["m0"]})),
            err(6, &["master"]),
        ),
        case(
            "mode unknown",
            b.with(json!({"mode": "weird"})),
            err(7, &["mode", "weird"]),
        ),
        case("mode of wrong type", b.with(json!({"mode": 1})), err(6, &["mode"])),
        case("mtu below 68", b.with(json!({"mtu": 10})), err(7, &["mtu", "10"])),
        case("mtu negative", b.with(json!({"mtu": -1})), err(7, &["mtu", "-1"])),
        case(
            "mtu above the master's",
            b.with(json!({"mtu": 9001})),
            err(7, &["mtu", "9001", "m0"]),
        ),
        case("mtu of wrong type", b.with(json!({"mtu": "1500"})), err(6, &["mtu"])),
        case(
            "mtu out of range of any integer",
            b.with(json!({"mtu": 1e30})),
            err(6, &["mtu"]),
        ),
        case("mac invalid", b.with(json!({"mac": "zz"})), err(7, &["mac", "zz"])),
        case(
            "mac multicast",
            b.with(json!({"mac": "01:00:00:00:00:01"})),
            err(7, &["mac", "01:00:00:00:00:01"]),
        ),
        case(
            "mac all zero",
            b.with(json!({"mac": "00:00:00:00:00:00"})),
            err(7, &["mac"]),
        ),
        case(
            "sourceMacs without source mode",
            b.with(json!({"sourceMacs": ["02:00:00:00:00:01"]})),
            err(7, &["sourceMacs"]),
        ),
        case(
            "source mode without sourceMacs",
            b.with(json!({"mode": "source"})),
            err(7, &["sourceMacs"]),
        ),
        case(
            "sourceMacs invalid",
            b.with(json!({"mode": "source", "sourceMacs": ["nope"]})),
            err(7, &["sourceMacs[0]", "nope"]),
        ),
        case(
            "bcqueuelen negative",
            b.with(json!({"bcqueuelen": -5})),
            err(7, &["-5 (key \"bcqueuelen\")"]),
        ),
        case(
            "linkInContainer a string",
            b.with(json!({"linkInContainer": "yes"})),
            err(6, &["linkInContainer"]),
        ),
        case(
            "linkInContainer with a master only the host has",
            b.with(json!({"linkInContainer": true})),
            err(7, &["master", "m0", "container"]),
        ),
    ]
}

fn bridge_cases(b: &Bed) -> Vec<Case> {
    vec![
        case(
            "bridge name too long",
            b.with(json!({"bridge": "br0123456789abcd"})),
            err(7, &["bridge", "br0123456789abcd"]),
        ),
        case(
            "bridge name with /",
            b.with(json!({"bridge": "a/b"})),
            err(7, &["bridge", "a/b"]),
        ),
        case("bridge name empty", b.with(json!({"bridge": ""})), err(7, &["bridge"])),
        case(
            "bridge name with NUL",
            b.with(json!({"bridge": "br\u{0}x"})),
            err(7, &["bridge"]),
        ),
        case(
            "bridge name of wrong type",
            b.with(json!({"bridge": 0})),
            err(6, &["bridge"]),
        ),
        case(
            "bridge name of an existing non-bridge",
            b.with(json!({"bridge": "lo"})),
            err(103, &["lo", "not a bridge"]),
        ),
        case("mtu below 68", b.with(json!({"mtu": 10})), err(7, &["mtu", "10"])),
        case(
            "mtu above 65535",
            b.with(json!({"mtu": 70000})),
            err(7, &["mtu", "70000"]),
        ),
        case("mtu of wrong type", b.with(json!({"mtu": "1500"})), err(6, &["mtu"])),
        case(
            "vlan above 4094",
            b.with(json!({"vlan": 5000})),
            err(7, &["vlan", "5000"]),
        ),
        case("vlan negative", b.with(json!({"vlan": -1})), err(7, &["vlan", "-1"])),
        case(
            "vlanTrunk minID without maxID",
            b.with(json!({"vlanTrunk": [{"minID": 10}]})),
            err(7, &["vlanTrunk", "maxID"]),
        ),
        case(
            "vlanTrunk id out of range",
            b.with(json!({"vlanTrunk": [{"id": 9999}]})),
            err(7, &["vlanTrunk", "id"]),
        ),
        case(
            "vlanTrunk of wrong type",
            b.with(json!({"vlanTrunk": 5})),
            err(6, &["vlanTrunk"]),
        ),
        case(
            "hairpinMode with promiscMode",
            b.with(json!({"hairpinMode": true, "promiscMode": true})),
            err(7, &["hairpinMode", "promiscMode"]),
        ),
        case(
            "isGateway a string",
            b.with(json!({"isGateway": "yes"})),
            err(6, &["isGateway"]),
        ),
        case("ipMasq a number", b.with(json!({"ipMasq": 1})), err(6, &["ipMasq"])),
        case(
            "ipMasqBackend unknown",
            b.with(json!({"ipMasqBackend": "pf"})),
            err(7, &["ipMasqBackend", "pf"]),
        ),
        case(
            "args.cni.mac invalid",
            b.with(json!({"args": {"cni": {"mac": "nope"}}})),
            err(7, &["args.cni.mac", "nope"]),
        ),
        case(
            "disableContainerInterface with ipam",
            b.with(json!({"disableContainerInterface": true})),
            err(7, &["disableContainerInterface"]),
        ),
        case(
            "DEL with a bridge name too long",
            b.with(json!({"bridge": "br0123456789abcd"})).command("DEL"),
            Expect::Deleted,
        ),
    ]
}

fn bad_input(plugin: &'static str) {
    let b = Bed::new(plugin);
    // A network directory planted as a file, for the "network dir planted as a file" case.
    let name = b.conf["name"].as_str().unwrap();
    std::fs::write(b.data.join(format!("{name}-file")), "not a dir").unwrap();
    let mut cases = common_cases(&b);
    match plugin {
        "host-local" => cases.extend(host_local_cases(&b)),
        "macvlan" => {
            cases.extend(netns_cases(&b));
            cases.extend(macvlan_cases(&b));
        }
        "bridge" => {
            cases.extend(netns_cases(&b));
            cases.extend(bridge_cases(&b));
        }
        _ => unreachable!(),
    }
    assert!(cases.len() >= 40, "{plugin}: only {} cases", cases.len());
    let mut failures = run_cases(&b, cases);
    // c0 is still there and whole, and nobody else got a lease.
    let leases = lease_files(&b.data.join(name));
    if leases.len() != 1 || leases[0].1 != "c0\r\neth0" {
        failures.push(format!("[{plugin}] leases at the end: {leases:?}"));
    }
    assert_no_failures(failures);
}

/// Numbers are refused, never wrapped: every integer key of `plugin` (and the route attributes
/// of its IPAM), given 2^32 + 1500, 99999999999 or a number beyond 64 bits, fails with code 7
/// naming the key and the number as written, and nothing is created. (A macvlan `mtu` of
/// 4294968796 made the link with MTU 1500; 99999999999 was reported as `invalid mtu
/// 1215752191`; out of their type, `bcqueuelen` and the route attributes were decode errors.)
fn numbers_out_of_range(plugin: &'static str) {
    let b = Bed::new(plugin);
    let route = |k: &str| json!({"ipam": {"routes": [{"dst": "0.0.0.0/0", k: "@N@"}]}});
    let mut keys: Vec<(String, Value)> = vec![("mtu".into(), json!({"mtu": "@N@"}))];
    match plugin {
        "bridge" => {
            keys.push(("vlan".into(), json!({"vlan": "@N@"})));
            keys.push((
                "vlanTrunk[0].minID".into(),
                json!({"vlanTrunk": [{"minID": "@N@", "maxID": 4094}]}),
            ));
            keys.push((
                "vlanTrunk[0].maxID".into(),
                json!({"vlanTrunk": [{"minID": 1, "maxID": "@N@"}]}),
            ));
            keys.push(("vlanTrunk[0].id".into(), json!({"vlanTrunk": [{"id": "@N@"}]})));
        }
        "macvlan" => keys.push(("bcqueuelen".into(), json!({"bcqueuelen": "@N@"}))),
        _ => unreachable!(),
    }
    for k in ["mtu", "advmss", "priority", "table", "scope"] {
        keys.push((format!("ipam.routes[0].{k}"), route(k)));
    }
    let mut cases = Vec::new();
    for (key, extra) in &keys {
        let text = merged(&b.conf, extra.clone()).to_string();
        for lit in ["4294968796", "99999999999", "18446744073709551616", "-4294967297"] {
            let needle = format!("{lit} (key \"{key}\")");
            cases.push(case(
                format!("{key} {lit}"),
                b.raw(text.replace("\"@N@\"", lit)),
                err(7, &[&needle]),
            ));
        }
    }
    let mut failures = run_cases(&b, cases);
    let name = b.conf["name"].as_str().unwrap();
    let leases = lease_files(&b.data.join(name));
    if leases.len() != 1 || leases[0].1 != "c0\r\neth0" {
        failures.push(format!("[{plugin}] leases at the end: {leases:?}"));
    }
    assert_no_failures(failures);
}

#[test]
fn numbers_out_of_range_bridge() {
    numbers_out_of_range("bridge");
}

#[test]
fn numbers_out_of_range_macvlan() {
    numbers_out_of_range("macvlan");
}

#[test]
fn bad_input_host_local() {
    bad_input("host-local");
}

#[test]
fn bad_input_macvlan() {
    bad_input("macvlan");
}

#[test]
fn bad_input_bridge() {
    bad_input("bridge");
}
