//! The lease store under the faults of a real node (issue 19): a runtime that retries an ADD
//! while its first one still runs, a full disk, files in the store that are not what they
//! should be, a lock holder that hangs. Never one address for two containers, never a hang.
//!
//! Everything runs in private namespaces with private lease stores (see `cni_tests`); the
//! full-disk case mounts a small tmpfs of its own on a temp dir, unmounted at the end.

mod macvlan_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cni_tests::{
    bin, concurrent_adds_of_one_attachment, eventually, lease_files, sh, Cni, Netns, Output, Running, SameAttachment,
    TempDir,
};
use serde_json::{json, Value};

/// No plugin call may take anywhere near this long; a call that does has hung.
const HANG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// 1a. Concurrent ADDs of one attachment: the undo of the losers never releases the winner's
// lease.

/// The leases of `store` that name attachment (`id`, eth0), IPv4 first.
fn leases_naming(store: &Path, id: &str) -> Vec<String> {
    let mut l: Vec<String> = lease_files(store)
        .into_iter()
        .filter(|(_, c)| c == &format!("{id}\r\neth0"))
        .map(|(ip, _)| ip)
        .collect();
    l.sort_by_key(|s| s.contains(':'));
    l
}

const ROUNDS: usize = 10;

#[test]
fn concurrent_bridge_adds_of_one_attachment_keep_its_lease() {
    let host = Netns::new();
    let data = TempDir::new("flt-br");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "fltbr", "type": "bridge", "bridge": "fltbr0", "isGateway": true,
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.93.0.0/24"}], [{"subnet": "fd93::/64"}]]}
    });
    for n in [2, 8] {
        for round in 0..ROUNDS {
            let store = data.join("fltbr");
            let round = SameAttachment {
                what: &format!("bridge, {n} at once, round {round}"),
                host: &host,
                plugin: "bridge",
                conf: &conf,
                id: &format!("c{n}-{round}"),
                n,
                families: 2,
            };
            concurrent_adds_of_one_attachment(&round, |id| leases_naming(&store, id));
        }
    }
}

#[test]
fn concurrent_macvlan_adds_of_one_attachment_keep_its_lease() {
    let bed = macvlan_common::Bed::new("flt");
    let conf = bed.conf(json!({}));
    for n in [2, 8] {
        for round in 0..ROUNDS {
            let store = bed.data.join(&bed.net);
            let round = SameAttachment {
                what: &format!("macvlan, {n} at once, round {round}"),
                host: &bed.host,
                plugin: "macvlan",
                conf: &conf,
                id: &format!("c{n}-{round}"),
                n,
                families: 1,
            };
            concurrent_adds_of_one_attachment(&round, |id| leases_naming(&store, id));
        }
    }
}

/// host-local alone, with the undo a delegating plugin runs: every ADD of the attachment at
/// once (each as the call of its own token), then the undo of all but one of them at once,
/// as if their plugins had failed: the one that stays keeps the lease, whichever it is.
#[test]
fn concurrent_host_local_adds_and_undos_of_one_attachment_keep_its_lease() {
    let host = Netns::new();
    let data = TempDir::new("flt-hl");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "flthl", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.94.0.0/24"}], [{"subnet": "fd94::/64"}]]}
    });
    let store = data.join("flthl");
    let call = |cmd: &str, id: &str| Cni::call("host-local", &host, cmd, id, Some("/proc/self/ns/net"), &conf);
    for n in [2, 8] {
        for round in 0..ROUNDS {
            let id = format!("c{n}-{round}");
            let tokens: Vec<String> = (0..n).map(|i| format!("tok{i}r{round}")).collect();
            let adds: Vec<Running> = tokens
                .iter()
                .map(|t| call("ADD", &id).env("CNI_RS_ADD_TOKEN", t).spawn())
                .collect();
            let outs: Vec<Output> = adds.into_iter().map(|c| c.wait_within(HANG)).collect();
            let first = outs[0].expect_ok();
            for o in &outs {
                assert_eq!(
                    o.expect_ok()["ips"],
                    first["ips"],
                    "every ADD of the attachment got the same lease"
                );
            }
            let keep = round % n;
            let undos: Vec<Running> = tokens
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != keep)
                .map(|(_, t)| call("DEL", &id).env("CNI_RS_UNDO_FAILED_ADD", t).spawn())
                .collect();
            for u in undos {
                u.wait_within(HANG).expect_ok();
            }
            assert_eq!(
                leases_naming(&store, &id).len(),
                2,
                "{n} at once, round {round}: the lease stays"
            );
            call("DEL", &id).run().expect_ok();
            assert!(leases_naming(&store, &id).is_empty());
        }
    }
}

/// The pointers and leases of a store.
fn pointers_and_leases(store: &Path) -> Vec<(String, String)> {
    let mut v = lease_files(store);
    for e in std::fs::read_dir(store).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("last_reserved_ip.") {
            v.push((n, std::fs::read_to_string(e.path()).unwrap()));
        }
    }
    v.sort();
    v
}

/// A host-local killed right after it moved a round-robin pointer (SIGKILL: no unwinding) is
/// undone by the plugin that ran it, the pointer included: the record of what the ADD moves is
/// written before the pointer moves.
#[test]
fn a_host_local_killed_after_moving_the_pointer_is_undone_pointer_included() {
    let host = Netns::new();
    let data = TempDir::new("flt-kill");
    let conf = json!({
        "cniVersion": "1.0.0", "name": "fltkill", "type": "bridge", "bridge": "fltkill0", "isGateway": true,
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.97.0.0/24"}], [{"subnet": "fd97::/64"}]]}
    });
    let store = data.join("fltkill");
    let first = Netns::new();
    Cni::call("bridge", &host, "ADD", "first", Some(&first.path()), &conf)
        .run()
        .expect_ok();
    let before = pointers_and_leases(&store);
    let ctr = Netns::new();
    let out = Cni::call("bridge", &host, "ADD", "c1", Some(&ctr.path()), &conf)
        .env("CNI_RS_FAULT", "host-local:pointer-moved:kill")
        .spawn()
        .wait_within(HANG);
    assert!(!out.success(), "the ADD failed: {:?}", out.stdout);
    assert_eq!(pointers_and_leases(&store), before, "the store is as before the ADD");
    assert!(!ctr.links().iter().any(|l| l == "eth0"));
}

// ---------------------------------------------------------------------------------------------
// 1b. A boot record that is empty or truncated is no record: the living containers keep
// their leases.

/// A tmpfs of `size` mounted on a temp dir, unmounted (lazily) on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = TempDir::new("flt-tmpfs");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(st.success(), "mounting a tmpfs on {}", dir.path().display());
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system up: a file that takes every free block.
    fn fill(&self) -> PathBuf {
        let f = self.path().join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4096"])
            .arg(format!("of={}", f.display()))
            .stderr(std::process::Stdio::null())
            .status();
        f
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A store as the reference leaves it: two living containers' leases, a pointer, no boot record.
fn reference_store(store: &Path) {
    std::fs::create_dir_all(store).unwrap();
    std::fs::write(store.join("10.95.0.2"), "live1\r\neth0").unwrap();
    std::fs::write(store.join("10.95.0.3"), "live2\r\neth0").unwrap();
    std::fs::write(store.join("last_reserved_ip.0"), "10.95.0.3").unwrap();
}

fn hl_conf(data: &Path, net: &str) -> Value {
    json!({"cniVersion": "1.0.0", "name": net, "type": "host-local",
           "ipam": {"type": "host-local", "subnet": "10.95.0.0/24", "dataDir": data}})
}

fn hl(conf: &Value, cmd: &str, id: &str) -> Output {
    Cni::new(bin("host-local"))
        .command(cmd)
        .container_id(id)
        .netns("/proc/self/ns/net")
        .config(conf)
        .spawn()
        .wait_within(HANG)
}

/// Files of `dir` (not recursive) that are empty, but for the lock (which is empty).
fn empty_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file() && e.metadata().unwrap().len() == 0)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock")
        .collect()
}

#[test]
fn a_full_disk_on_the_first_call_leaves_no_empty_boot_record_and_no_lease_is_lost() {
    let fs = Tmpfs::new("256k");
    let store = fs.path().join("fltdisk");
    reference_store(&store);
    let conf = hl_conf(fs.path(), "fltdisk");
    let filler = fs.fill();

    let msg = hl(&conf, "ADD", "new1").expect_error(5);
    assert!(msg.contains("No space left"), "{msg}");
    assert!(
        empty_files(&store).is_empty(),
        "no write left an empty file: {:?}",
        empty_files(&store)
    );
    let temps: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(temps.is_empty(), "no temp file left: {temps:?}");

    // Space is freed: the store is adopted, the living containers keep their leases.
    std::fs::remove_file(filler).unwrap();
    let r = hl(&conf, "ADD", "new1").expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.95.0.4/24");
    let leases = lease_files(&store);
    assert_eq!(
        leases,
        [
            ("10.95.0.2".to_string(), "live1\r\neth0".to_string()),
            ("10.95.0.3".to_string(), "live2\r\neth0".to_string()),
            ("10.95.0.4".to_string(), "new1\r\neth0".to_string()),
        ]
    );
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(std::fs::read_to_string(store.join(".boot_id")).unwrap(), boot);
}

#[test]
fn an_empty_or_truncated_boot_record_is_no_record() {
    let data = TempDir::new("flt-boot");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    for (i, record) in ["", "\n", &boot[..11], "not a boot id\n"].into_iter().enumerate() {
        let net = format!("fltboot{i}");
        let store = data.join(&net);
        reference_store(&store);
        std::fs::write(store.join(".boot_id"), record).unwrap();
        let conf = hl_conf(data.path(), &net);
        hl(&conf, "ADD", "new1").expect_ok();
        let held: Vec<String> = lease_files(&store).into_iter().map(|(ip, _)| ip).collect();
        assert_eq!(
            held,
            ["10.95.0.2", "10.95.0.3", "10.95.0.4"],
            "record {record:?}: nothing released"
        );
        assert_eq!(std::fs::read_to_string(store.join(".boot_id")).unwrap(), boot);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Never hang: a file of the store that is not a regular file is refused at once, naming it;
// the lock wait has a deadline.

/// Makes a non-regular file of `kind` at `path` (what was there is removed).
fn plant(path: &Path, kind: &str) -> Option<std::os::unix::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    match kind {
        // SAFETY: a valid C string.
        "fifo" => assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0),
        // SAFETY: a valid C string; makes a character device like /dev/null.
        "device" => assert_eq!(
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 3)) },
            0
        ),
        "directory" => std::fs::create_dir(path).unwrap(),
        "socket" => return Some(std::os::unix::net::UnixListener::bind(path).unwrap()),
        _ => unreachable!(),
    }
    None
}

#[test]
fn a_store_file_that_is_not_a_regular_file_is_refused_at_once() {
    let data = TempDir::new("flt-fifo");
    let mut failures = Vec::new();
    // (file, the verbs that must refuse it; the others must not hang either).
    let cases: &[(&str, &[&str])] = &[
        ("lock", &["ADD", "DEL", "CHECK"]),
        ("last_reserved_ip.0", &["ADD"]),
        (".boot_id", &["ADD", "DEL", "CHECK"]),
        (".last_reserved_undo", &["ADD"]),
        (".by-id/c1:eth0", &["ADD", "DEL", "CHECK"]),
        (".claim-c1:eth0", &["ADD"]),
        ("10.95.0.9", &[]),
    ];
    let mut n = 0;
    for (file, refusing) in cases {
        for kind in ["fifo", "socket", "directory", "device"] {
            for verb in ["ADD", "DEL", "CHECK"] {
                n += 1;
                let net = format!("fltf{n}");
                let conf = hl_conf(data.path(), &net);
                let store = data.join(&net);
                // A store of ours, with c1 holding a lease, and the file planted.
                hl(&conf, "ADD", "c1").expect_ok();
                let _sock = plant(&store.join(file), kind);
                let started = Instant::now();
                // A new container's ADD reads the pointers; the files of an attachment are read
                // by its own calls; DEL and CHECK are of c1's lease.
                let per_attachment = file.contains("c1:");
                let out = hl(&conf, verb, if verb == "ADD" && !per_attachment { "c2" } else { "c1" });
                let took = started.elapsed();
                let case = format!("{kind} at {file}, {verb}");
                if took > Duration::from_secs(2) {
                    failures.push(format!("{case}: took {took:?}"));
                }
                if refusing.contains(&verb) {
                    if out.error_code() != Some(5) {
                        failures.push(format!(
                            "{case}: expected code 5, got {:?} {}",
                            out.error_code(),
                            out.error_msg()
                        ));
                    } else if !out.error_msg().contains(file.rsplit('/').next().unwrap()) {
                        failures.push(format!("{case}: the message does not name it: {}", out.error_msg()));
                    }
                } else if !out.success() && out.error_code() != Some(5) {
                    failures.push(format!("{case}: {:?} {}", out.error_code(), out.error_msg()));
                }
            }
        }
    }
    cni_tests::assert_no_failures(failures);
}

/// A process that holds the store's lock and is stopped (SIGSTOP): killed on drop.
struct StoppedHolder {
    child: Child,
}

impl Drop for StoppedHolder {
    fn drop(&mut self) {
        // SAFETY: signals to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
            libc::kill(self.child.id() as i32, libc::SIGCONT);
        }
        let _ = self.child.wait();
    }
}

#[test]
fn a_stopped_lock_holder_makes_calls_fail_with_code_11_naming_it_not_hang() {
    let data = TempDir::new("flt-lock");
    let conf = hl_conf(data.path(), "fltlock");
    hl(&conf, "ADD", "c1").expect_ok();
    let lock = data.join("fltlock/lock");
    // flock(1) takes the lock and holds it while its command runs.
    // --no-fork: the lock's holder is the process we stop and kill, not a child of it.
    let child = Command::new("flock")
        .args(["-x", "--no-fork"])
        .arg(&lock)
        .args(["sleep", "600"])
        .spawn()
        .expect("flock(1) from util-linux");
    let holder = StoppedHolder { child };
    let pid = holder.child.id();
    eventually(Duration::from_secs(10), "flock(1) holds the lock", || {
        sh(&["cat", "/proc/locks"])
            .lines()
            .any(|l| l.contains(&format!(" {pid} ")) && !l.contains("->"))
    });
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    for verb in ["ADD", "DEL"] {
        let started = Instant::now();
        let out = hl(&conf, verb, "c2");
        let took = started.elapsed();
        let msg = out.expect_error(11);
        assert!(msg.contains(&format!("pid {pid}")), "{verb}: names the holder: {msg}");
        assert!(msg.contains("fltlock"), "{verb}: names the store: {msg}");
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(15),
            "{verb}: {took:?}"
        );
    }
    drop(holder);
    // Released: the calls go through again.
    hl(&conf, "ADD", "c2").expect_ok();
}
