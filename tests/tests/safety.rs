//! Safety: the modes of the lease store, symlinks planted in it, no shell in product code.
//! The plugins are run as a runtime runs them, inside private "host" namespaces, with private
//! lease stores; nothing here touches the machine's own interfaces, addresses, routes or
//! firewall.
//!
//! Needs root and `cargo build --workspace`.

use std::os::unix::fs::MetadataExt;

use cni_tests::node::tree;
use cni_tests::{assert_no_failures, bin, lease_files, merged, Cni, Netns, TempDir};
use serde_json::json;

/// Nothing of the lease store is writable by group or others, even with a umask of 0.
#[test]
fn lease_store_is_not_writable_by_others() {
    let data = TempDir::new("modes");
    let data_dir = data.join("made/by/host-local");
    let host = Netns::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "modenet", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.89.0.0/24"}], [{"subnet": "fd00:89::/64"}]]}});
    let call = |cmd: &str, id: &str| {
        Cni::new(bin("host-local"))
            .command(cmd)
            .container_id(id)
            .host(&host)
            .config(&conf)
            .wrapper(&["sh", "-c", "umask 000; exec \"$@\"", "sh"])
            .run()
    };
    call("ADD", "c1").expect_ok();
    call("ADD", "c2").expect_ok();
    call("DEL", "c1").expect_ok();
    let tree = tree(&data.join("made"));
    assert!(tree.len() > 8, "{tree:?}");
    for (path, what) in &tree {
        let mode = std::fs::symlink_metadata(data.join("made").join(path)).unwrap().mode();
        assert_eq!(mode & 0o022, 0, "{path} is writable by others: {what}");
    }
}

/// A symlink planted in the lease store, for the network directory, a lease, the lock, the
/// last-reserved file or the index, is never written through: the ADD fails cleanly or skips
/// it, and what it points to is left alone.
#[test]
fn symlinks_planted_in_the_store_are_never_followed() {
    struct Plant {
        name: &'static str,
        /// Relative to the data dir; the target is a file or directory outside the store.
        link: &'static str,
        target_is_dir: bool,
        /// `Some(true)`: the ADD must fail cleanly (code 5, no lease); `Some(false)`: it must
        /// work; `None`: either (a bookkeeping file may be replaced, never followed).
        add_fails: Option<bool>,
        /// The symlink must still be there afterwards (not replaced by a file of ours).
        stays: bool,
    }
    #[rustfmt::skip]
    let plants = [
        Plant { name: "network dir", link: "symnet", target_is_dir: true, add_fails: Some(true), stays: true },
        Plant { name: "lease", link: "symnet/10.90.0.2", target_is_dir: false, add_fails: Some(false), stays: true },
        Plant { name: "lock", link: "symnet/lock", target_is_dir: false, add_fails: None, stays: false },
        Plant { name: "last reserved", link: "symnet/last_reserved_ip.0", target_is_dir: false, add_fails: None, stays: false },
        Plant { name: "index dir", link: "symnet/.by-id", target_is_dir: true, add_fails: Some(false), stays: false },
        Plant { name: "index stamp", link: "symnet/.by-id/.stamp", target_is_dir: false, add_fails: Some(false), stays: false },
        Plant { name: "index entry", link: "symnet/.by-id/c1:eth0", target_is_dir: false, add_fails: Some(false), stays: false },
    ];
    let host = Netns::new();
    let mut failures = Vec::new();
    for p in plants {
        let data = TempDir::new("sym");
        let outside = TempDir::new("sym-outside");
        let target = outside.join("target");
        if p.target_is_dir {
            std::fs::create_dir(&target).unwrap();
        } else {
            std::fs::write(&target, "c1\r\neth0").unwrap();
        }
        let link = data.join(p.link);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let before = tree(outside.path());
        let conf = json!({"cniVersion": "1.0.0", "name": "symnet", "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.90.0.0/24"}]]}});
        let call = |cmd: &str| {
            Cni::new(bin("host-local"))
                .command(cmd)
                .container_id("c1")
                .host(&host)
                .config(&conf)
                .run()
        };
        let add = call("ADD");
        let mut problems = Vec::new();
        if add.stderr.to_lowercase().contains("panic") {
            problems.push(format!("panicked: {}", add.stderr));
        }
        let failed = !add.success();
        if p.add_fails == Some(false) && failed {
            problems.push(format!("ADD failed: {}", add.raw_stdout.trim()));
        }
        if p.add_fails == Some(true) && !failed {
            problems.push(format!("ADD worked: {}", add.raw_stdout.trim()));
        }
        if failed {
            match add.error_code() {
                Some(5) => {}
                other => problems.push(format!("ADD gave {other:?}, want code 5: {}", add.raw_stdout.trim())),
            }
            let leases = lease_files(&data.join("symnet"));
            if !leases.is_empty() {
                problems.push(format!("a failed ADD left leases {leases:?}"));
            }
        } else if p.name == "lease" && add.stdout["ips"][0]["address"] == "10.90.0.2/24" {
            problems.push("ADD took the address planted as a symlink".into());
        }
        eprintln!(
            "symlink planted at the {}: ADD gave {:?}",
            p.name,
            add.error_code().unwrap_or(0)
        );
        // DEL, CHECK and GC must leave the target alone too (they may fail).
        call("DEL");
        call("CHECK");
        Cni::new(bin("host-local"))
            .command("GC")
            .host(&host)
            .config(&merged(
                &conf,
                json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": []}),
            ))
            .run();
        if tree(outside.path()) != before {
            problems.push(format!(
                "the target outside changed: {:?} -> {:?}",
                before,
                tree(outside.path())
            ));
        }
        if p.stays && !std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            problems.push("the planted symlink was replaced".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", p.name, problems.join("; ")));
        }
    }
    assert_no_failures(failures);
}

/// External commands (iptables, nft, the IPAM plugin) are run with argument lists, never
/// through a shell, in the product code.
#[test]
fn no_shell_in_product_code() {
    let root = cni_tests::workspace_dir();
    let mut files = Vec::new();
    for dir in ["plugins", "ipam"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && p.components().any(|c| c.as_os_str() == "src") {
                    files.push(p);
                }
            }
        }
    }
    assert!(files.len() > 10, "{files:?}");
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests may use a shell; product code may not.
        let product = text.split("#[cfg(test)]").next().unwrap();
        for (n, line) in product.lines().enumerate() {
            let l = line.replace(' ', "");
            let shell = [
                "Command::new(\"sh\")",
                "Command::new(\"bash\")",
                "\"/bin/sh\"",
                "\"/bin/bash\"",
                "Proc::new(\"sh\")",
            ]
            .iter()
            .any(|s| l.contains(s))
                || l.contains(".arg(\"-c\")")
                || l.contains("args([\"-c\"");
            if shell {
                bad.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
            }
            if l.contains("Command::new(") || l.contains("Proc::new(") {
                // The three runners: firewall::exec (iptables, nft), delegate (IPAM plugins) and
                // skel's hand-over to another program (host-local-etcd), all `Command::new(bin)`.
                let ok = ["Command::new(bin)", "Proc::new(bin)"].iter().any(|s| l.contains(s));
                if !ok {
                    bad.push(format!(
                        "{}:{}: unexpected command: {}",
                        f.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
