//! A write to stderr never fails a call (issue 19, item 3): with stderr a pipe nobody reads
//! any more (every write gets EPIPE) or no descriptor 2 at all, every call still ends with its
//! own exit status, its result or error JSON on stdout and all of its work done, never with
//! an abort. Each case makes the plugin write to stderr: an error line, a panic report, a
//! notice of host-local in the middle of its work.
//!
//! The plugins run as a runtime runs them, inside private "host" namespaces, with private
//! lease stores. Needs root and `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};

use cni_tests::{bin, lease_files, merge, Cni, Netns, Output, StderrTo, TempDir};
use serde_json::{json, Value};

const MODES: [StderrTo; 2] = [StderrTo::BrokenPipe, StderrTo::Closed];

/// A boot id that is not this boot's: a store stamped with it was last used in another boot.
const OTHER_BOOT: &str = "00000000-0000-4000-8000-000000000000";

fn this_boot() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

/// Stamps the store `dir` as last used in another boot: its next call releases its leases
/// and says so on stderr.
fn from_another_boot(dir: &Path) {
    std::fs::write(dir.join(".boot_id"), format!("{OTHER_BOOT}\n")).unwrap();
}

fn boot_record(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(".boot_id"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Asserts a call ended on its own (no signal, no abort) with `code`.
#[track_caller]
fn exited(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.code,
        Some(code),
        "{what}: exit status (None: killed by a signal, 134: aborted); stdout {}",
        out.raw_stdout.trim()
    );
}

/// A host namespace with a lease store and a bridge config on 10.71.0.0/24.
struct Bed {
    host: Netns,
    data: TempDir,
}

impl Bed {
    fn new() -> Bed {
        Bed {
            host: Netns::new(),
            data: TempDir::new("stderr"),
        }
    }

    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0",
            "name": "errnet",
            "type": "bridge",
            "bridge": "cnierr0",
            "isGateway": true,
            "ipam": {"type": "host-local", "subnet": "10.71.0.0/24", "dataDir": self.data.path()}
        });
        merge(&mut c, extra);
        c
    }

    fn dir(&self) -> PathBuf {
        self.data.join("errnet")
    }

    fn leases(&self) -> Vec<(String, String)> {
        lease_files(&self.dir())
    }

    fn bridge(&self, cmd: &str, id: &str, ctr: &Netns, conf: &Value) -> Cni {
        Cni::call("bridge", &self.host, cmd, id, Some(&ctr.path()), conf)
    }

    fn host_local(&self, cmd: &str, id: &str, conf: &Value) -> Cni {
        Cni::new(bin("host-local"))
            .command(cmd)
            .container_id(id)
            .host(&self.host)
            .config(conf)
    }
}

#[test]
fn a_failing_add_answers_on_stdout_and_undoes_everything() {
    for mode in MODES {
        let bed = Bed::new();
        let ctr = Netns::new();
        // The bridge holds an address of another subnet: the gateway cannot go on it, so the
        // ADD fails after IPAM and undoes the lease, the veth and the container interface.
        bed.host.ip(&["link", "add", "cnierr0", "type", "bridge"]);
        bed.host.ip(&["addr", "add", "10.99.0.1/24", "dev", "cnierr0"]);
        let out = bed.bridge("ADD", "c1", &ctr, &bed.conf(json!({}))).stderr(mode).run();
        exited(&out, 1, &format!("{mode:?}: failing bridge ADD"));
        assert_eq!(out.error_code(), Some(103), "{mode:?}: {}", out.raw_stdout);
        assert!(bed.leases().is_empty(), "{mode:?}: lease left: {:?}", bed.leases());
        assert!(ctr.links().is_empty(), "{mode:?}: {:?}", ctr.links());
        assert_eq!(bed.host.links(), ["cnierr0"], "{mode:?}");

        // A panic after IPAM (a fault point of debug builds): its report goes to stderr, the
        // runtime gets code 100, and everything is undone all the same.
        bed.host.ip(&["addr", "flush", "dev", "cnierr0"]);
        let out = bed
            .bridge("ADD", "c1", &ctr, &bed.conf(json!({})))
            .env("CNI_RS_FAULT", "bridge:after-ipam")
            .stderr(mode)
            .run();
        exited(&out, 1, &format!("{mode:?}: panicking bridge ADD"));
        assert_eq!(out.error_code(), Some(100), "{mode:?}: {}", out.raw_stdout);
        assert!(out.error_msg().contains("fault point"), "{mode:?}: {}", out.raw_stdout);
        assert!(bed.leases().is_empty(), "{mode:?}: lease left: {:?}", bed.leases());
        assert!(ctr.links().is_empty(), "{mode:?}: {:?}", ctr.links());
        assert_eq!(bed.host.links(), ["cnierr0"], "{mode:?}");

        // host-local on its own, with a config it refuses.
        let bad = bed.conf(json!({"ipam": {"subnet": "10.71.0.5/24"}}));
        let out = bed.host_local("ADD", "c1", &bad).stderr(mode).run();
        exited(&out, 1, &format!("{mode:?}: failing host-local ADD"));
        assert_eq!(out.error_code(), Some(7), "{mode:?}: {}", out.raw_stdout);
        assert!(out.error_msg().contains("ipam.subnet"), "{mode:?}: {}", out.raw_stdout);
    }
}

#[test]
fn an_add_that_prints_a_notice_completes() {
    for mode in MODES {
        // host-local: the store was last used in another boot, so the ADD releases the old
        // lease, says so on stderr, and goes on to stamp the store and lease an address.
        let bed = Bed::new();
        let conf = bed.conf(json!({}));
        bed.host_local("ADD", "old", &conf).run().expect_ok();
        from_another_boot(&bed.dir());
        let out = bed.host_local("ADD", "c1", &conf).stderr(mode).run();
        exited(&out, 0, &format!("{mode:?}: host-local ADD with a notice"));
        // The old lease is gone, the new one there (the round robin goes on after the old one).
        assert_eq!(
            out.stdout["ips"][0]["address"], "10.71.0.3/24",
            "{mode:?}: {}",
            out.raw_stdout
        );
        assert_eq!(
            bed.leases(),
            [("10.71.0.3".to_string(), "c1\r\neth0".to_string())],
            "{mode:?}"
        );
        assert_eq!(boot_record(&bed.dir()), this_boot(), "{mode:?}");

        // bridge, whose host-local runs in its process and prints the notice there.
        from_another_boot(&bed.dir());
        let ctr = Netns::new();
        let out = bed.bridge("ADD", "c2", &ctr, &conf).stderr(mode).run();
        exited(&out, 0, &format!("{mode:?}: bridge ADD with a notice"));
        let ip = out.stdout["ips"][0]["address"].as_str().unwrap_or_default().to_string();
        assert!(ip.starts_with("10.71.0."), "{mode:?}: {}", out.raw_stdout);
        let addr = ip.split('/').next().unwrap().to_string();
        assert_eq!(bed.leases(), [(addr, "c2\r\neth0".to_string())], "{mode:?}");
        assert_eq!(boot_record(&bed.dir()), this_boot(), "{mode:?}");
        assert_eq!(ctr.links(), ["eth0"], "{mode:?}");
        let shown = ctr.ip(&["-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(shown.contains(&ip), "{mode:?}: {shown}");
    }
}

#[test]
fn del_and_gc_answer_whatever_stderr_is() {
    for mode in MODES {
        let bed = Bed::new();
        let conf = bed.conf(json!({}));
        let ctr = Netns::new();
        bed.bridge("ADD", "c1", &ctr, &conf).run().expect_ok();
        assert_eq!(bed.leases().len(), 1, "{mode:?}");

        // A DEL that fails prints its error JSON.
        let old = bed.conf(json!({"cniVersion": "9.9.9"}));
        let out = bed.bridge("DEL", "c1", &ctr, &old).stderr(mode).run();
        exited(&out, 1, &format!("{mode:?}: failing DEL"));
        assert_eq!(out.error_code(), Some(1), "{mode:?}: {}", out.raw_stdout);
        assert_eq!(bed.leases().len(), 1, "{mode:?}");

        // A DEL whose host-local prints a notice (the store is from another boot) does all of
        // its work: the link and the lease go, the store is stamped.
        from_another_boot(&bed.dir());
        let out = bed.bridge("DEL", "c1", &ctr, &conf).stderr(mode).run();
        exited(&out, 0, &format!("{mode:?}: bridge DEL with a notice"));
        assert_eq!(out.raw_stdout, "", "{mode:?}");
        assert!(ctr.links().is_empty(), "{mode:?}: {:?}", ctr.links());
        assert!(bed.leases().is_empty(), "{mode:?}: {:?}", bed.leases());
        assert_eq!(boot_record(&bed.dir()), this_boot(), "{mode:?}");

        // A GC that releases a lease says so on stderr.
        bed.host_local("ADD", "gone", &conf).run().expect_ok();
        let gc = bed.conf(json!({"cni.dev/valid-attachments": []}));
        let out = bed.host_local("GC", "gone", &gc).stderr(mode).run();
        exited(&out, 0, &format!("{mode:?}: host-local GC with a notice"));
        assert!(bed.leases().is_empty(), "{mode:?}: {:?}", bed.leases());
    }
}
