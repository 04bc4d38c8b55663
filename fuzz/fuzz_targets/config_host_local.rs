//! host-local's `ipam` section and `CNI_ARGS`, as `IpamConfig::load` reads them, and as DEL
//! and GC read them (`IpamConfig::load_for_teardown`): whatever ADD takes, a teardown takes and
//! reads alike.
#![no_main]

use host_local::config::IpamConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (args, stdin) = cni_fuzz::split_args(data);
    let teardown = IpamConfig::load_for_teardown(stdin);
    if let Err(e) = &teardown {
        cni_fuzz::check_error(e, &[6, 7]);
    }
    match IpamConfig::load(stdin, &args) {
        Ok(c) => {
            let t = teardown.expect("a teardown takes what an ADD takes");
            assert_eq!((&t.name, &t.data_dir, &t.etcd), (&c.name, &c.data_dir, &c.etcd));
            assert_eq!(t.range_sets, c.range_sets);
            assert_eq!(t.release_on_reboot, c.release_on_reboot);
            assert!(!c.range_sets.is_empty());
            for set in &c.range_sets {
                let v4 = set.is_ipv4();
                for r in &set.ranges {
                    assert_eq!(r.subnet, r.subnet.trunc(), "host bits in {}", r.subnet);
                    assert_eq!(r.range_start.is_ipv4(), v4);
                    assert!(r.subnet.contains(&r.range_start) && r.subnet.contains(&r.range_end));
                    assert!(r.contains(r.range_start) && r.contains(r.range_end));
                    assert!(r.size() >= 1);
                }
                // Asking the set about addresses must not panic.
                let _ = set.contains(set.ranges[0].range_end);
            }
            assert!(cni::env::valid_name(&c.name));
            for req in &c.requested {
                let _ = c.range_sets.iter().any(|s| s.contains(req.ip));
            }
        }
        Err(e) => cni_fuzz::check_error(&e, &[4, 6, 7]),
    }
});
