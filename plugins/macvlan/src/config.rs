//! The macvlan plugin's configuration: the reference's keys and defaults, plus `source` mode
//! with its `sourceMacs`. Everything that can be checked without looking at the machine is
//! checked in [`MacvlanConf::load`]; the master (which may come from the default route) is
//! resolved by the verbs that need it, so that DEL never depends on it.

use serde::Deserialize;
use serde_json::Value;

use cni::env::{check_ifname, cni_arg};
use cni::netlink::{parse_mac, MacvlanMode};
use cni::teardown::Lenient;
use cni::{Call, Error, NetConf, Result};

/// The smallest MTU a macvlan takes (the kernel's ETH_MIN_MTU).
pub const MIN_MTU: i64 = 68;
/// The largest MTU the kernel's link attribute holds (`IFLA_MTU`, 32 bits); the master's MTU,
/// checked by [`crate::plugin`], is the real bound.
pub const MAX_MTU: i64 = u32::MAX as i64;

#[derive(Debug, Clone, Deserialize)]
pub struct MacvlanConf {
    /// The common keys, decoded from the same document (`call.conf`).
    #[serde(skip)]
    pub net: NetConf,
    /// The parent interface; empty: the interface of the default route.
    #[serde(default)]
    pub master: String,
    /// `bridge` (default), `private`, `vepa`, `passthru` or `source`.
    #[serde(default)]
    pub mode: String,
    /// 0: the master's MTU.
    #[serde(default)]
    pub mtu: i64,
    /// The container MAC (lowest priority: `CNI_ARGS` `MAC=`, then `runtimeConfig.mac` win).
    #[serde(default)]
    pub mac: String,
    /// The master is an interface of the container's namespace.
    #[serde(rename = "linkInContainer", default)]
    pub link_in_container: bool,
    /// Length of the broadcast/multicast receive queue (kernel 5.11+); 0: the kernel default.
    #[serde(default)]
    pub bcqueuelen: u32,
    /// `source` mode: the source MACs whose frames the interface receives.
    #[serde(rename = "sourceMacs", default)]
    pub source_macs: Vec<String>,
    /// Ours (not in the reference): a host-side macvlan "shim" on the master and a host route
    /// per container address through it, so that the host reaches its own containers.
    #[serde(rename = "hostShim", default)]
    pub host_shim: bool,

    /// Derived from `mode`.
    #[serde(skip, default = "default_mode")]
    pub parsed_mode: MacvlanMode,
    /// Derived: the container MAC, from the sources above in their priority.
    #[serde(skip)]
    pub parsed_mac: Option<[u8; 6]>,
    /// Derived from `sourceMacs`.
    #[serde(skip)]
    pub parsed_source_macs: Vec<[u8; 6]>,
}

fn default_mode() -> MacvlanMode {
    MacvlanMode::Bridge
}

impl MacvlanConf {
    /// Decodes and checks the config of `call` (everything but the master's existence and
    /// MTU, which [`crate::plugin`] checks against the machine).
    pub fn load(call: &Call) -> Result<MacvlanConf> {
        let mut c: MacvlanConf = cni::types::decode(&call.stdin)?;
        c.net = call.conf.clone();
        c.net.require_type()?;
        if !c.master.is_empty() {
            if let Err(why) = check_ifname(&c.master) {
                return Err(Error::invalid_config(format!(
                    "invalid master \"{}\" (key \"master\"): {why}",
                    c.master.escape_debug()
                )));
            }
        }
        c.parsed_mode = MacvlanMode::parse(&c.mode).ok_or_else(|| {
            Error::invalid_config(format!(
                "unknown macvlan mode \"{}\" (key \"mode\"): must be bridge, private, vepa, passthru or source",
                c.mode.escape_debug()
            ))
        })?;
        if c.mtu != 0 && !(MIN_MTU..=MAX_MTU).contains(&c.mtu) {
            return Err(Error::invalid_config(format!(
                "invalid mtu {} (key \"mtu\"): must be 0 (the master's) or between {MIN_MTU} and the master's MTU",
                c.mtu
            )));
        }
        c.parsed_source_macs = source_macs(&c.source_macs, c.parsed_mode)?;
        if c.host_shim {
            check_host_shim(&c)?;
        }
        c.parsed_mac = container_mac(&c.mac, &c.net, &call.env.args)?;
        Ok(c)
    }

    /// The MTU to create the link with (None: the master's).
    pub fn mtu(&self) -> Option<u32> {
        u32::try_from(self.mtu).ok().filter(|m| *m > 0)
    }

    pub fn bcqueuelen(&self) -> Option<u32> {
        (self.bcqueuelen > 0).then_some(self.bcqueuelen)
    }
}

/// `hostShim` works where the kernel forwards frames between two macvlans of one master: in
/// `bridge` mode, with the master on the host, and with addresses to route to.
fn check_host_shim(c: &MacvlanConf) -> Result<()> {
    if c.link_in_container {
        return Err(Error::invalid_config(
            "key \"hostShim\" cannot be used with \"linkInContainer\": true: the shim lives on the host, \
             next to a master the host owns",
        ));
    }
    if c.parsed_mode != MacvlanMode::Bridge {
        return Err(Error::invalid_config(format!(
            "key \"hostShim\" needs mode \"bridge\", not \"{}\" (key \"mode\"): only bridge-mode macvlans \
             of one master reach each other, so the host's shim could not reach the container",
            c.parsed_mode.as_str()
        )));
    }
    if c.net.ipam_type().is_none() {
        return Err(Error::invalid_config(
            "key \"hostShim\" needs an \"ipam\" section: the host routes go to the container's addresses",
        ));
    }
    Ok(())
}

/// `sourceMacs`: required (at least one) in `source` mode, refused in the others.
fn source_macs(list: &[String], mode: MacvlanMode) -> Result<Vec<[u8; 6]>> {
    if mode != MacvlanMode::Source {
        if !list.is_empty() {
            return Err(Error::invalid_config(format!(
                "key \"sourceMacs\" is only valid with mode \"source\", not \"{}\"",
                mode.as_str()
            )));
        }
        return Ok(Vec::new());
    }
    if list.is_empty() {
        return Err(Error::invalid_config(
            "mode \"source\" needs the allowed source MAC addresses in key \"sourceMacs\"",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            parse_mac(s).ok_or_else(|| {
                Error::invalid_config(format!(
                    "invalid MAC address \"{}\" in sourceMacs[{i}]: expected a unicast address like 0a:58:0a:f4:00:02",
                    s.escape_debug()
                ))
            })
        })
        .collect()
}

/// The container MAC in the reference's priority: `runtimeConfig.mac`, then `CNI_ARGS`
/// `MAC=`, then the config's `mac`. (The reference macvlan does not read `args.cni.mac`.)
pub fn container_mac(conf_mac: &str, net: &NetConf, cni_args: &str) -> Result<Option<[u8; 6]>> {
    let runtime = match net.runtime_config.as_ref().and_then(|r| r.mac.as_ref()) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Error::invalid_config("runtimeConfig.mac must be a string")),
    };
    let candidates = [
        ("runtimeConfig.mac", runtime),
        ("CNI_ARGS MAC", cni_arg(cni_args, "MAC")?),
        ("key \"mac\"", Some(conf_mac.to_string())),
    ];
    for (what, v) in candidates {
        let Some(s) = v.filter(|s| !s.is_empty()) else {
            continue;
        };
        return parse_mac(&s).map(Some).ok_or_else(|| {
            Error::invalid_config(format!(
                "invalid MAC address \"{}\" in {what}: expected a unicast address like 0a:58:0a:f4:00:02",
                s.escape_debug()
            ))
        });
    }
    Ok(None)
}

/// What DEL reads of macvlan's own keys: `hostShim`, leniently (see [`cni::teardown`]; a
/// value that does not read counts as on: removing routes that are not there does nothing).
/// Nothing else: the container interface, the lease and the shim's routes are found by the
/// attachment, not by `master`, `mode`, `mtu` or a MAC, so that a config that can no longer be
/// used can still be torn down.
#[derive(Debug, Default, Deserialize)]
pub struct MacvlanTeardown {
    #[serde(rename = "hostShim", default)]
    pub host_shim: Lenient<bool>,
}

impl cni::teardown::Teardown for MacvlanTeardown {}

#[cfg(test)]
mod tests {
    use super::*;
    use cni::env::Command;

    fn call(conf: &str, args: &str) -> Call {
        cni::skel::test_call(Command::Add, conf.as_bytes(), args).unwrap()
    }

    fn load(conf: &str, args: &str) -> Result<MacvlanConf> {
        MacvlanConf::load(&call(conf, args))
    }

    #[test]
    fn defaults() {
        let c = load(r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan"}"#, "").unwrap();
        assert_eq!(c.parsed_mode, MacvlanMode::Bridge);
        assert_eq!(c.master, "");
        assert_eq!(c.mtu(), None);
        assert_eq!(c.parsed_mac, None);
        assert_eq!(c.net.ipam_type(), None);
    }

    #[test]
    fn bad_values_are_code_7_and_named() {
        let cases = [
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","mode":"weird"}"#,
                "mode",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","mtu":-1}"#, "mtu"),
            (r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","mtu":10}"#, "mtu"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","mac":"zz"}"#,
                "\"mac\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","master":"a/b"}"#,
                "master",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","mode":"source"}"#,
                "sourceMacs",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","mode":"source","sourceMacs":["01:00:00:00:00:01"]}"#,
                "sourceMacs[0]",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","sourceMacs":["02:00:00:00:00:01"]}"#,
                "sourceMacs",
            ),
        ];
        for (conf, needle) in cases {
            let e = load(conf, "").unwrap_err();
            assert_eq!(e.code(), 7, "{conf}: {e}");
            assert!(e.to_string().contains(needle), "{conf}: {e}");
        }
    }

    #[test]
    fn mac_priority() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","mac":"02:00:00:00:00:01",
                       "runtimeConfig":{"mac":"02:00:00:00:00:03"}}"#;
        assert_eq!(
            load(conf, "MAC=02:00:00:00:00:02").unwrap().parsed_mac,
            Some([2, 0, 0, 0, 0, 3])
        );
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","mac":"02:00:00:00:00:01"}"#;
        assert_eq!(
            load(conf, "IgnoreUnknown=1;MAC=02:00:00:00:00:02").unwrap().parsed_mac,
            Some([2, 0, 0, 0, 0, 2])
        );
        assert_eq!(load(conf, "").unwrap().parsed_mac, Some([2, 0, 0, 0, 0, 1]));
        let e = load(conf, "MAC=nope").unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("CNI_ARGS MAC"), "{e}");
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","runtimeConfig":{"mac":"bad"}}"#;
        assert!(load(conf, "").unwrap_err().to_string().contains("runtimeConfig.mac"));
    }

    #[test]
    fn type_is_required() {
        let e = load(r#"{"cniVersion":"1.0.0","name":"n"}"#, "").unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("\"type\""), "{e}");
    }

    #[test]
    fn source_mode() {
        let c = load(
            r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","mode":"source","sourceMacs":["02:00:00:00:00:01","02:00:00:00:00:02"]}"#,
            "",
        )
        .unwrap();
        assert_eq!(c.parsed_mode, MacvlanMode::Source);
        assert_eq!(c.parsed_source_macs.len(), 2);
    }

    #[test]
    fn host_shim_is_off_by_default_and_refused_where_it_cannot_work() {
        let ipam = r#""ipam":{"type":"host-local"}"#;
        let c = load(
            &format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"macvlan",{ipam}}}"#),
            "",
        )
        .unwrap();
        assert!(!c.host_shim);
        let c = load(
            &format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"macvlan","hostShim":true,{ipam}}}"#),
            "",
        )
        .unwrap();
        assert!(c.host_shim);
        let c = load(
            &format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"macvlan","hostShim":true,"mode":"bridge",{ipam}}}"#),
            "",
        )
        .unwrap();
        assert!(c.host_shim);
        let cases = [
            (r#""linkInContainer":true"#.to_string(), "linkInContainer"),
            (r#""mode":"private""#.to_string(), "\"private\""),
            (r#""mode":"vepa""#.to_string(), "\"vepa\""),
            (r#""mode":"passthru""#.to_string(), "\"passthru\""),
            (
                r#""mode":"source","sourceMacs":["02:00:00:00:00:01"]"#.to_string(),
                "\"source\"",
            ),
        ];
        for (extra, needle) in cases {
            let conf =
                format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"macvlan","hostShim":true,{extra},{ipam}}}"#);
            let e = load(&conf, "").unwrap_err();
            assert_eq!(e.code(), 7, "{conf}: {e}");
            assert!(
                e.to_string().contains("hostShim") && e.to_string().contains(needle),
                "{conf}: {e}"
            );
        }
        let e = load(
            r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan","hostShim":true}"#,
            "",
        )
        .unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("ipam"), "{e}");
        // Off, the modes that cannot have it are fine.
        load(
            &format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"macvlan","hostShim":false,"mode":"vepa",{ipam}}}"#),
            "",
        )
        .unwrap();
        let e = cni::types::decode::<MacvlanConf>(br#"{"cniVersion":"1.0.0","hostShim":"yes"}"#).unwrap_err();
        assert_eq!(e.code(), 6);
        assert!(e.to_string().contains("hostShim"), "{e}");
    }

    /// Numbers that no integer key takes: beyond 32 and 64 bits, negative.
    const OUT_OF_RANGE: [&str; 8] = [
        "4294968796",
        "99999999999",
        "4294967296",
        "-1",
        "-4294967297",
        "9223372036854775808",
        "18446744073709551616",
        "99999999999999999999999",
    ];

    /// Every integer key: a number in its range is taken exactly; one out of it (its own
    /// range, or its type's) is code 7 naming the key and the number as written, never
    /// wrapped (an mtu of 2^32 + 1500 was taken as 1500).
    #[test]
    fn numbers_are_refused_never_wrapped() {
        let conf = |extra: &str| format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"macvlan",{extra}}}"#);
        let keys: [(&str, &[&str]); 2] = [("mtu", &["1", "67"]), ("bcqueuelen", &[])];
        for (key, own) in keys {
            for lit in OUT_OF_RANGE.iter().chain(own) {
                let c = conf(&format!(r#""{key}":{lit}"#));
                let e = load(&c, "").unwrap_err();
                assert_eq!(e.code(), 7, "{c}: {e}");
                let m = e.to_string();
                assert!(m.contains(&format!("{lit} (key \"{key}\")")), "{c}: {m}");
            }
        }
        let c = load(&conf(r#""mtu":4294967295,"bcqueuelen":4294967295"#), "").unwrap();
        assert_eq!((c.mtu(), c.bcqueuelen()), (Some(u32::MAX), Some(u32::MAX)));
        let c = load(&conf(r#""mtu":68,"bcqueuelen":0"#), "").unwrap();
        assert_eq!((c.mtu(), c.bcqueuelen()), (Some(68), None));
        let e = load(&conf(r#""mtu":4294968796"#), "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid mtu 4294968796 (key \"mtu\"): must be 0 (the master's) or between 68 and the master's MTU"
        );
        let e = load(&conf(r#""BCQueueLen":4294967296"#), "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid bcqueuelen 4294967296 (key \"bcqueuelen\"): must be an integer between 0 and 4294967295"
        );
    }

    #[test]
    fn decode_errors_name_the_field() {
        let e = cni::types::decode::<MacvlanConf>(br#"{"cniVersion":"1.0.0","bcqueuelen":"x"}"#).unwrap_err();
        assert_eq!(e.code(), 6);
        assert!(e.to_string().contains("bcqueuelen"), "{e}");
    }
}
