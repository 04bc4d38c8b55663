//! `CNI_ARGS` (`parse_cni_args`, `cni_arg`, host-local's own reading of `IP=` and
//! `IgnoreUnknown=`) and the other `CNI_*` variables as `Env::from_lookup` checks them.
#![no_main]

use cni::env::{cni_arg, parse_cni_args, Command, Env};
use libfuzzer_sys::fuzz_target;

const CONF: &str =
    r#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]}}"#;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    match parse_cni_args(&s) {
        Ok(pairs) => {
            for (k, v) in &pairs {
                assert!(!k.contains(';') && !v.contains(';') && !k.contains('=') && !v.contains('='));
                if k == "IgnoreUnknown" {
                    continue;
                }
                // With unknown keys allowed, the last pair with a key is what cni_arg finds
                // (as the reference's LoadArgs, which overwrites the field).
                let with_ignore = format!("{s};IgnoreUnknown=1");
                let last = pairs.iter().rfind(|(k2, _)| k2 == k).map(|(_, v2)| v2.clone());
                if !pairs.iter().any(|(k2, v2)| {
                    k2 == "IgnoreUnknown" && !matches!(v2.to_ascii_lowercase().as_str(), "1" | "true" | "0" | "false")
                }) {
                    assert_eq!(cni_arg(&with_ignore, k).unwrap(), last);
                }
            }
        }
        Err(e) => {
            cni_fuzz::check_error(&e, &[4]);
            assert!(cni_arg(&s, "IP").is_err());
        }
    }
    if let Err(e) = host_local::config::IpamConfig::load(CONF.as_bytes(), &s) {
        cni_fuzz::check_error(&e, &[4, 7]);
    }

    // The input's NUL-separated parts as CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS.
    let mut parts = s.split('\0');
    let (id, ifname, netns) = (parts.next(), parts.next(), parts.next());
    let env = Env::from_lookup(Command::Add, |k| {
        match k {
            "CNI_CONTAINERID" => id,
            "CNI_IFNAME" => ifname,
            "CNI_NETNS" => netns,
            "CNI_PATH" => Some("/opt/cni/bin"),
            _ => None,
        }
        .map(str::to_string)
    });
    match env {
        Ok(env) => {
            assert!(cni::env::valid_name(&env.container_id));
            assert!(cni::env::check_ifname(&env.ifname).is_ok());
            assert!(!env.container_id.contains('/') && !env.ifname.contains('/'));
        }
        Err(e) => cni_fuzz::check_error(&e, &[4]),
    }
});
