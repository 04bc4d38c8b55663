//! The macvlan config: the skeleton's common keys, then `MacvlanConf::load` (ADD), and what
//! DEL reads (`MacvlanTeardown`), which never fails on a config the skeleton took.
#![no_main]

use cni::env::Command;
use cni::teardown::Teardown;
use cni_fuzz::macvlan_config::{MacvlanConf, MacvlanTeardown};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (args, stdin) = cni_fuzz::split_args(data);
    let Ok(call) = cni_fuzz::call(Command::Add, stdin, &args) else {
        return;
    };
    match MacvlanConf::load(&call) {
        Ok(c) => {
            assert!(c.master.is_empty() || cni::env::check_ifname(&c.master).is_ok());
            assert!(c.mtu == 0 || c.mtu >= 68);
            if let Some(m) = c.parsed_mac {
                assert!(m[0] & 1 == 0 && m != [0; 6], "multicast or zero MAC {m:?}");
            }
            let _ = c.net.prev_result();
        }
        Err(e) => cni_fuzz::check_error(&e, &[4, 6, 7]),
    }
    if let Ok(del) = cni_fuzz::call(Command::Del, stdin, &args) {
        if let Err(e) = MacvlanTeardown::decode(&del.stdin) {
            panic!("DEL refused a config the skeleton took: {e}");
        }
    }
});
