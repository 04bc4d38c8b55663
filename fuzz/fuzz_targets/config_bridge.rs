//! The bridge config: the skeleton's common keys, then `BridgeConf::load` (ADD), and what DEL
//! reads (`BridgeTeardown`), which never fails on a config the skeleton took.
#![no_main]

use cni::env::Command;
use cni::teardown::Teardown;
use cni_fuzz::bridge_config::{BridgeConf, BridgeTeardown};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (args, stdin) = cni_fuzz::split_args(data);
    for command in [Command::Add, Command::Del] {
        let Ok(call) = cni_fuzz::call(command, stdin, &args) else {
            continue;
        };
        match BridgeConf::load(&call) {
            Ok(c) => {
                assert!(cni::env::check_ifname(&c.bridge).is_ok(), "{:?}", c.bridge);
                assert!(c.mtu == 0 || (68..=65535).contains(&c.mtu));
                assert!((0..=4094).contains(&c.vlan));
                assert!(c.vlans.iter().all(|v| (1..=4094).contains(v)));
                let _ = c.net.prev_result();
            }
            Err(e) => cni_fuzz::check_error(&e, &[4, 6, 7]),
        }
        if command == Command::Del {
            if let Err(e) = BridgeTeardown::decode(&call.stdin) {
                panic!("DEL refused a config the skeleton took: {e}");
            }
        }
    }
});
