//! The macvlan config: the skeleton's common keys, then `MacvlanConf::load` (and `decode`,
//! which DEL uses).
#![no_main]

use cni::env::Command;
use cni_fuzz::macvlan_config::MacvlanConf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (args, stdin) = cni_fuzz::split_args(data);
    let Ok(call) = cni_fuzz::call(Command::Add, stdin, &args) else {
        return;
    };
    let decoded = MacvlanConf::decode(&call);
    match MacvlanConf::load(&call) {
        Ok(c) => {
            assert!(decoded.is_ok(), "load accepted what decode refused");
            assert!(c.master.is_empty() || cni::env::check_ifname(&c.master).is_ok());
            assert!(c.mtu == 0 || c.mtu >= 68);
            if let Some(m) = c.parsed_mac {
                assert!(m[0] & 1 == 0 && m != [0; 6], "multicast or zero MAC {m:?}");
            }
            let _ = c.net.prev_result();
        }
        Err(e) => cni_fuzz::check_error(&e, &[4, 6, 7]),
    }
    // Decoding alone refuses what does not decode (6) and numbers out of their type (7).
    if let Err(e) = decoded {
        cni_fuzz::check_error(&e, &[6, 7]);
    }
});
