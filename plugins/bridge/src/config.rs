//! The bridge plugin's configuration: the reference's keys and defaults, validated up front so
//! that a bad config changes nothing on the node.

use serde::Deserialize;
use serde_json::Value;

use cni::env::{check_ifname, cni_arg};
use cni::netlink::parse_mac;
use cni::teardown::Lenient;
use cni::{Call, Error, NetConf, Result};

fn default_bridge() -> String {
    "cni0".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct VlanTrunk {
    #[serde(rename = "minID")]
    pub min_id: Option<i64>,
    #[serde(rename = "maxID")]
    pub max_id: Option<i64>,
    pub id: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BridgeConf {
    /// The common keys, decoded from the same document (`call.conf`).
    #[serde(skip)]
    pub net: NetConf,
    #[serde(rename = "bridge", default = "default_bridge")]
    pub bridge: String,
    #[serde(rename = "isGateway", default)]
    pub is_gw: bool,
    #[serde(rename = "isDefaultGateway", default)]
    pub is_default_gw: bool,
    #[serde(rename = "forceAddress", default)]
    pub force_address: bool,
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: bool,
    #[serde(rename = "ipMasqBackend", default)]
    pub ip_masq_backend: Option<String>,
    #[serde(default)]
    pub mtu: i64,
    #[serde(rename = "hairpinMode", default)]
    pub hairpin: bool,
    #[serde(rename = "promiscMode", default)]
    pub promisc: bool,
    #[serde(default)]
    pub vlan: i64,
    #[serde(rename = "vlanTrunk", default)]
    pub vlan_trunk: Option<Vec<VlanTrunk>>,
    #[serde(rename = "preserveDefaultVlan", default)]
    pub preserve_default_vlan: bool,
    #[serde(rename = "macspoofchk", default)]
    pub mac_spoof_chk: bool,
    #[serde(rename = "enabledad", default)]
    pub enable_dad: bool,
    #[serde(rename = "disableContainerInterface", default)]
    pub disable_container_interface: bool,
    #[serde(rename = "portIsolation", default)]
    pub port_isolation: bool,

    /// Derived: the container MAC, from runtimeConfig.mac, args.cni.mac or CNI_ARGS MAC.
    #[serde(skip)]
    pub mac: Option<[u8; 6]>,
    /// Derived: the trunk VLAN ids, sorted.
    #[serde(skip)]
    pub vlans: Vec<u16>,
}

impl BridgeConf {
    /// Decodes and validates the config of `call`.
    pub fn load(call: &Call) -> Result<BridgeConf> {
        let mut c: BridgeConf = cni::types::decode(&call.stdin)?;
        c.net = call.conf.clone();
        if c.is_default_gw {
            c.is_gw = true;
        }
        c.net.require_type()?;
        if let Err(why) = check_ifname(&c.bridge) {
            return Err(Error::invalid_config(format!(
                "invalid bridge name \"{}\" (key \"bridge\"): {why}",
                c.bridge.escape_debug()
            )));
        }
        if c.mtu != 0 && !(68..=65535).contains(&c.mtu) {
            return Err(Error::invalid_config(format!(
                "invalid mtu {} (key \"mtu\"): must be 0 (the default) or between 68 and 65535",
                c.mtu
            )));
        }
        if !(0..=4094).contains(&c.vlan) {
            return Err(Error::invalid_config(format!(
                "invalid VLAN ID {} (key \"vlan\"): must be between 0 and 4094",
                c.vlan
            )));
        }
        c.vlans = collect_trunk(c.vlan_trunk.as_deref())?;
        if c.hairpin && c.promisc {
            return Err(Error::invalid_config(
                "cannot set hairpinMode and promiscMode at the same time",
            ));
        }
        if c.net.ipam_type().is_some() && c.disable_container_interface {
            return Err(Error::invalid_config(
                "cannot use IPAM (key \"ipam\") when disableContainerInterface is set",
            ));
        }
        if let Some(b) = &c.ip_masq_backend {
            if b != "iptables" && b != "nftables" {
                return Err(Error::invalid_config(format!(
                    "invalid ipMasqBackend \"{}\": must be \"iptables\" or \"nftables\"",
                    b.escape_debug()
                )));
            }
        }
        c.mac = container_mac(&c.net, &call.env.args)?;
        Ok(c)
    }

    /// The MTU to set (None: the kernel's default); [`BridgeConf::load`] checked its range.
    pub fn mtu(&self) -> Option<u32> {
        u32::try_from(self.mtu).ok().filter(|m| *m > 0)
    }

    /// The VLAN of the port (None: none); [`BridgeConf::load`] checked its range.
    pub fn vlan_id(&self) -> Option<u16> {
        u16::try_from(self.vlan).ok().filter(|v| *v != 0)
    }
}

/// The container MAC in the reference's priority: runtimeConfig.mac, then args.cni.mac, then
/// `CNI_ARGS` `MAC=`.
pub fn container_mac(net: &NetConf, cni_args: &str) -> Result<Option<[u8; 6]>> {
    let candidates = [
        (
            "runtimeConfig.mac",
            net.runtime_config.as_ref().and_then(|r| r.mac.clone()),
        ),
        (
            "args.cni.mac",
            net.args
                .as_ref()
                .and_then(|a| a.cni.as_ref())
                .and_then(|c| c.mac.clone()),
        ),
        ("CNI_ARGS MAC", cni_arg(cni_args, "MAC")?.map(Value::String)),
    ];
    for (what, v) in candidates {
        let Some(v) = v else { continue };
        let s = v
            .as_str()
            .ok_or_else(|| Error::invalid_config(format!("{what} must be a string")))?;
        if s.is_empty() {
            continue;
        }
        return parse_mac(s).map(Some).ok_or_else(|| {
            Error::invalid_config(format!(
                "invalid MAC address \"{}\" in {what}: expected a unicast address like 0a:58:0a:f4:00:02",
                s.escape_debug()
            ))
        });
    }
    Ok(None)
}

fn collect_trunk(trunk: Option<&[VlanTrunk]>) -> Result<Vec<u16>> {
    let bad = |m: &str| Error::invalid_config(format!("invalid vlanTrunk: {m}"));
    // A VLAN id of entry `i`, checked before it is narrowed: the message names the key and the
    // number as given.
    let id = |i: usize, key: &str, v: i64| -> Result<u16> {
        u16::try_from(v).ok().filter(|v| (1..=4094).contains(v)).ok_or_else(|| {
            bad(&format!(
                "incorrect trunk {key} parameter {v} (key \"vlanTrunk[{i}].{key}\"): must be between 1 and 4094"
            ))
        })
    };
    let mut out = std::collections::BTreeSet::new();
    for (i, t) in trunk.unwrap_or_default().iter().enumerate() {
        match (t.min_id, t.max_id) {
            (Some(min), Some(max)) => {
                let min = id(i, "minID", min)?;
                let max = id(i, "maxID", max)?;
                if max < min {
                    return Err(bad(&format!(
                        "minID is greater than maxID in trunk parameter (vlanTrunk[{i}]: minID {min}, maxID {max})"
                    )));
                }
                out.extend(min..=max);
            }
            (None, Some(_)) => {
                return Err(bad(
                    "minID and maxID should be configured simultaneously, minID is missing",
                ))
            }
            (Some(_), None) => {
                return Err(bad(
                    "minID and maxID should be configured simultaneously, maxID is missing",
                ))
            }
            (None, None) => {}
        }
        if let Some(v) = t.id {
            out.insert(id(i, "id", v)?);
        }
    }
    Ok(out.into_iter().collect())
}

/// What DEL reads of the bridge's own keys: the switches of the rules it removes, each
/// leniently (see [`cni::teardown`]). A switch that does not read counts as on: removing rules
/// that are not there does nothing. Nothing else of the bridge's keys is read: the container
/// interface, the lease and the rules are found by the attachment, not by `bridge`, `mtu`,
/// `vlan` or a MAC.
#[derive(Debug, Default, Deserialize)]
pub struct BridgeTeardown {
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: Lenient<bool>,
    #[serde(rename = "macspoofchk", default)]
    pub mac_spoof_chk: Lenient<bool>,
}

impl cni::teardown::Teardown for BridgeTeardown {}

#[cfg(test)]
mod tests {
    use super::*;
    use cni::env::Command;

    fn load(conf: &str) -> Result<BridgeConf> {
        let call = cni::skel::test_call(Command::Add, conf.as_bytes(), "")?;
        BridgeConf::load(&call)
    }

    /// Numbers that no integer key takes: beyond its range, beyond 32 and 64 bits.
    const OUT_OF_RANGE: [&str; 7] = [
        "4294968796",
        "99999999999",
        "-4294967297",
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "99999999999999999999999",
    ];

    /// Every integer key of the config: a number in its range is taken exactly; one out of it
    /// (its own range, or its type's) is code 7 naming the key and the number as written.
    #[test]
    fn numbers_are_refused_never_wrapped() {
        let conf = |extra: &str| format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"bridge",{extra}}}"#);
        let keys: [(&str, &str, &[&str]); 5] = [
            ("mtu", r#""mtu":N"#, &["-1", "1", "67", "65536"]),
            ("vlan", r#""vlan":N"#, &["-1", "4095"]),
            (
                "vlanTrunk[0].minID",
                r#""vlanTrunk":[{"minID":N,"maxID":4094}]"#,
                &["0", "-1", "4095", "65537"],
            ),
            (
                "vlanTrunk[0].maxID",
                r#""vlanTrunk":[{"minID":1,"maxID":N}]"#,
                &["0", "-1", "4095", "65537"],
            ),
            (
                "vlanTrunk[0].id",
                r#""vlanTrunk":[{"id":N}]"#,
                &["0", "-1", "4095", "65537"],
            ),
        ];
        for (key, template, own) in keys {
            for lit in OUT_OF_RANGE.iter().chain(own) {
                let c = conf(&template.replace('N', lit));
                let e = load(&c).unwrap_err();
                assert_eq!(e.code(), 7, "{c}: {e}");
                let m = e.to_string();
                assert!(m.contains(&format!("{lit} (key \"{key}\")")), "{c}: {m}");
            }
        }
        let c = load(&conf(
            r#""mtu":65535,"vlan":4094,"vlanTrunk":[{"minID":4093,"maxID":4094},{"id":1}]"#,
        ))
        .unwrap();
        assert_eq!(
            (c.mtu(), c.vlan_id(), c.vlans),
            (Some(65535), Some(4094), vec![1, 4093, 4094])
        );
        let c = load(&conf(r#""mtu":68,"vlan":0"#)).unwrap();
        assert_eq!((c.mtu(), c.vlan_id()), (Some(68), None));
        let c = load(&conf(r#""mtu":0"#)).unwrap();
        assert_eq!(c.mtu(), None);
        let e = load(&conf(r#""vlanTrunk":[{"minID":20,"maxID":10}]"#)).unwrap_err();
        assert!(e.to_string().contains("minID 20, maxID 10"), "{e}");
        // As written: the message of a refused number.
        let e = load(&conf(r#""mtu":4294968796"#)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid mtu 4294968796 (key \"mtu\"): must be 0 (the default) or between 68 and 65535"
        );
        let e = load(&conf(r#""MTU":99999999999999999999999"#)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid mtu 99999999999999999999999 (key \"mtu\"): must be an integer between -9223372036854775808 and 9223372036854775807"
        );
    }

    #[test]
    fn trunk() {
        let t = vec![
            VlanTrunk {
                min_id: Some(10),
                max_id: Some(12),
                id: None,
            },
            VlanTrunk {
                min_id: None,
                max_id: None,
                id: Some(5),
            },
        ];
        assert_eq!(collect_trunk(Some(&t)).unwrap(), vec![5, 10, 11, 12]);
        let bad = vec![VlanTrunk {
            min_id: Some(10),
            max_id: None,
            id: None,
        }];
        assert_eq!(collect_trunk(Some(&bad)).unwrap_err().code(), 7);
    }

    #[test]
    fn mac_priority() {
        let net: NetConf = cni::types::decode(
            br#"{"RuntimeConfig": {"MAC": "0a:00:00:00:00:01"}, "ARGS": {"Cni": {"mac": "0a:00:00:00:00:02"}}}"#,
        )
        .unwrap();
        assert_eq!(
            container_mac(&net, "MAC=0a:00:00:00:00:03").unwrap(),
            Some([10, 0, 0, 0, 0, 1])
        );
        let only_args = NetConf {
            runtime_config: None,
            ..net
        };
        assert_eq!(container_mac(&only_args, "").unwrap(), Some([10, 0, 0, 0, 0, 2]));
        let net = NetConf::default();
        assert_eq!(
            container_mac(&net, "MAC=0a:00:00:00:00:03").unwrap(),
            Some([10, 0, 0, 0, 0, 3])
        );
        assert_eq!(container_mac(&net, "MAC=ff:ff:ff:ff:ff:ff").unwrap_err().code(), 7);
        assert_eq!(container_mac(&net, "K8S_POD_NAME=x").unwrap_err().code(), 4);
    }

    #[test]
    fn keys_match_as_in_the_reference() {
        let c: BridgeConf = cni::types::decode(
            br#"{"Bridge": "br9", "IsGateway": true, "MTU": 1400, "ipmasq": true, "HAIRPINMODE": true}"#,
        )
        .unwrap();
        assert_eq!(
            (c.bridge.as_str(), c.is_gw, c.mtu, c.ip_masq, c.hairpin),
            ("br9", true, 1400, true, true)
        );
        let e = cni::types::decode::<BridgeConf>(br#"{"MTU": "big"}"#).unwrap_err();
        assert_eq!(e.code(), 6);
        assert!(e.to_string().contains("mtu"), "{e}");
    }
}
