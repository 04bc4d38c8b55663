//! The spec's data: network configuration, results in every version, DNS, GC attachments.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::gojson::DecodeError;
pub use crate::gojson::Node;
use crate::version::Version;

/// The keys every network configuration has. Plugins embed it (`#[serde(flatten)]`) in their
/// own config type, which names the plugin's keys; keys that neither names are ignored (a
/// delegated plugin gets the raw config bytes, so nothing is lost for it). Only the `ipam`
/// section keeps its unknown keys ([`IpamRef::other`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// The runtime's capability args that bridge and macvlan read (host-local reads its own).
    #[serde(rename = "runtimeConfig", default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<MacArg>,
    /// `args`: bridge reads `args.cni.mac`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Args>,
    /// A result object (as the reference's `map[string]interface{}`: anything else is refused).
    #[serde(rename = "prevResult", default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Map<String, Value>>,
    /// GC: the attachments the runtime still uses (1.1.0).
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// GC: the key of the 1.1.0 drafts, still sent by some runtimes.
    #[serde(rename = "cni.dev/attachments", default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<Attachment>>,
}

/// A struct with a `mac` (Go: `string`; kept as a value so that the plugin can name a wrong
/// type in its message).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct MacArg {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Value>,
}

/// `args` of a config (the conventions document's `args.cni`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Args {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<MacArg>,
}

/// The `ipam` section as the delegating plugin sees it: the type, the rest is the IPAM's own.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct IpamRef {
    #[serde(rename = "type", default)]
    pub ipam_type: String,
}

/// A (container, interface) pair that GC must keep.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
}

impl NetConf {
    /// The spec requires `type`: a config without it names no plugin (code 7).
    pub fn require_type(&self) -> Result<()> {
        if self.plugin_type.is_empty() {
            return Err(Error::invalid_config(
                "network config has no \"type\": the key is required and names the plugin",
            ));
        }
        Ok(())
    }

    /// The GC keep-list: `cni.dev/valid-attachments`, else the older `cni.dev/attachments`.
    pub fn gc_keep(&self) -> Vec<Attachment> {
        self.valid_attachments
            .clone()
            .or_else(|| self.attachments.clone())
            .unwrap_or_default()
    }

    /// The IPAM plugin to delegate to, if the config names one.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam
            .as_ref()
            .map(|i| i.ipam_type.as_str())
            .filter(|t| !t.is_empty())
    }

    /// The previous result of a chain, parsed (any version from 0.3.0 on).
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match &self.prev_result {
            None => Ok(None),
            Some(m) => CniResult::from_value(&Value::Object(m.clone()))
                .map(Some)
                .map_err(|e| e.context("prevResult")),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
    /// Adds what `other` has that we lack (lists are merged without duplicates).
    pub fn merge(&mut self, other: &Dns) {
        fn add(to: &mut Vec<String>, from: &[String]) {
            for s in from {
                if !to.contains(s) {
                    to.push(s.clone());
                }
            }
        }
        add(&mut self.nameservers, &other.nameservers);
        add(&mut self.search, &other.search);
        add(&mut self.options, &other.options);
        if self.domain.is_empty() {
            self.domain = other.domain.clone();
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(rename = "socketPath", default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// A result, held in the newest shape (1.1.0) and printed in any version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// What results of 0.3.0 to 1.1.0 look like on the wire (the per-IP `version` of 0.3.x/0.4.0
/// is ignored on input: the address says its family).
#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
    // 0.1.0 / 0.2.0
    #[serde(default)]
    ip4: Option<LegacyIp>,
    #[serde(default)]
    ip6: Option<LegacyIp>,
}

#[derive(Deserialize)]
struct LegacyIp {
    ip: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

impl CniResult {
    /// Parses a result of any version we speak.
    pub fn from_value(v: &Value) -> Result<CniResult> {
        CniResult::from_node(Node::from(v))
    }

    fn from_node(node: Node) -> Result<CniResult> {
        let w: WireResult = crate::gojson::from_node(node).map_err(|e| {
            let path = e.path().to_string();
            match e.into_inner() {
                DecodeError::OutOfRange { value, min, max } => {
                    Error::invalid_config(format!("invalid result: {}", out_of_range(&path, &value, min, max)))
                }
                DecodeError::Json(e) => Error::decode(format!("invalid result at {path}: {e}")),
            }
        })?;
        let mut r = CniResult {
            interfaces: w.interfaces,
            ips: w.ips,
            routes: w.routes,
            dns: w.dns,
        };
        for l in [w.ip4, w.ip6].into_iter().flatten() {
            r.ips.push(IpConfig {
                interface: None,
                address: l.ip,
                gateway: l.gateway,
            });
            r.routes.extend(l.routes);
        }
        for ip in &r.ips {
            if let Some(i) = ip.interface {
                if i >= r.interfaces.len() {
                    return Err(Error::decode(format!(
                        "invalid result: ips entry {} names interface index {i}, but there are {} interfaces",
                        ip.address,
                        r.interfaces.len()
                    )));
                }
            }
        }
        Ok(r)
    }

    /// Parses a result as printed by a plugin (a number beyond 64 bits is refused as written).
    pub fn from_slice(b: &[u8]) -> Result<CniResult> {
        let node = Node::parse(b).map_err(|e| Error::decode(format!("invalid result JSON: {e}")))?;
        CniResult::from_node(node)
    }

    /// The result as the spec's JSON of `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let v = Version::parse(version).unwrap_or(Version(1, 1, 0));
        if !v.at_least("0.3.0") {
            return self.to_legacy_json(version);
        }
        let v11 = v.at_least("1.1.0");
        let v1 = v.at_least("1.0.0");
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version));
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if !v11 {
                        i.mtu = None;
                        i.socket_path = None;
                        i.pci_id = None;
                    }
                    serde_json::to_value(i).expect("interface serializes")
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifs));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut m = Map::new();
                    if !v1 {
                        let fam = if ip.address.addr().is_ipv4() { "4" } else { "6" };
                        m.insert("version".into(), json!(fam));
                    }
                    if let Some(i) = ip.interface {
                        m.insert("interface".into(), json!(i));
                    }
                    m.insert("address".into(), json!(ip.address.to_string()));
                    if let Some(g) = ip.gateway {
                        m.insert("gateway".into(), json!(g.to_string()));
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if !v11 {
                        r.mtu = None;
                        r.advmss = None;
                        r.priority = None;
                        r.table = None;
                        r.scope = None;
                    }
                    serde_json::to_value(r).expect("route serializes")
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), serde_json::to_value(&self.dns).expect("dns serializes"));
        Value::Object(out)
    }

    /// 0.1.0/0.2.0: one `ip4` and one `ip6`, each with the routes of its family.
    fn to_legacy_json(&self, version: &str) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version));
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|i| i.address.addr().is_ipv4() == v4) else {
                continue;
            };
            let mut m = Map::new();
            m.insert("ip".into(), json!(ip.address.to_string()));
            if let Some(g) = ip.gateway {
                m.insert("gateway".into(), json!(g.to_string()));
            }
            let routes: Vec<Value> = self
                .routes
                .iter()
                .filter(|r| r.dst.addr().is_ipv4() == v4)
                .map(|r| {
                    let mut rm = Map::new();
                    rm.insert("dst".into(), json!(r.dst.to_string()));
                    if let Some(gw) = r.gw {
                        rm.insert("gw".into(), json!(gw.to_string()));
                    }
                    Value::Object(rm)
                })
                .collect();
            if !routes.is_empty() {
                m.insert("routes".into(), Value::Array(routes));
            }
            out.insert(key.into(), Value::Object(m));
        }
        out.insert("dns".into(), serde_json::to_value(&self.dns).expect("dns serializes"));
        Value::Object(out)
    }
}

/// Decode a plugin's config type from stdin bytes, naming the offending field on error. Keys
/// match fields as in the reference's Go decoder ([`crate::gojson`]): `"MTU"` sets `mtu`.
pub fn decode<T: serde::de::DeserializeOwned>(stdin: &[u8]) -> Result<T> {
    // Anything after the config (a second document, garbage) makes it invalid, as in Go's
    // json.Unmarshal.
    let node = Node::parse(stdin).map_err(|e| Error::decode(format!("network config is not valid JSON: {e}")))?;
    // Go would take `null` for `{}`; a config that is not an object is a mistake.
    if !matches!(node, Node::Object(_)) {
        return Err(Error::decode("network config must be a JSON object"));
    }
    decode_node(node, "")
}

/// The message of a number out of its field's range (code 7): the field's name, the number as
/// written in the input, the key it was given under, and the bounds.
fn out_of_range(path: &str, value: &str, min: i128, max: i128) -> String {
    let name = path.rsplit('.').next().unwrap_or("").split('[').next().unwrap_or("");
    let name = if name.is_empty() { "value" } else { name };
    format!("invalid {name} {value} (key \"{path}\"): must be an integer between {min} and {max}")
}

/// Decodes `T` from a part of the config; `at` (e.g. `ipam`) prefixes the field in errors. A
/// number out of its field's range is code 7 (naming the key and the number as written), any
/// other mismatch code 6.
pub fn decode_node<T: serde::de::DeserializeOwned>(node: Node, at: &str) -> Result<T> {
    crate::gojson::from_node(node).map_err(|e| {
        let path = match (at, e.path().to_string()) {
            (at, p) if p == "." => at.to_string(),
            ("", p) => p,
            (at, p) => format!("{at}.{p}"),
        };
        let inner = match e.into_inner() {
            DecodeError::OutOfRange { value, min, max } => {
                return Error::invalid_config(out_of_range(&path, &value, min, max));
            }
            DecodeError::Json(e) => e,
        };
        if path.is_empty() {
            Error::decode(format!("invalid network config: {inner}"))
        } else {
            Error::decode(format!("invalid network config: field \"{path}\": {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: Some(1400),
                sandbox: Some("/run/netns/x".into()),
                ..Default::default()
            }],
            ips: vec![
                IpConfig {
                    interface: Some(0),
                    address: "10.1.0.2/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                },
                IpConfig {
                    interface: Some(0),
                    address: "fd00::2/64".parse().unwrap(),
                    gateway: None,
                },
            ],
            routes: vec![Route {
                mtu: Some(1300),
                ..Route::new("0.0.0.0/0".parse().unwrap(), Some("10.1.0.1".parse().unwrap()))
            }],
            dns: Dns {
                nameservers: vec!["10.1.0.1".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn versions_print_their_own_fields() {
        let r = sample();
        let v040 = r.to_json("0.4.0");
        assert_eq!(v040["ips"][0]["version"], "4");
        assert_eq!(v040["ips"][1]["version"], "6");
        assert!(v040["routes"][0].get("mtu").is_none());
        assert!(v040["interfaces"][0].get("mtu").is_none());
        let v100 = r.to_json("1.0.0");
        assert!(v100["ips"][0].get("version").is_none());
        assert!(v100["routes"][0].get("mtu").is_none());
        let v110 = r.to_json("1.1.0");
        assert_eq!(v110["routes"][0]["mtu"], 1300);
        assert_eq!(v110["interfaces"][0]["mtu"], 1400);
        let v020 = r.to_json("0.2.0");
        assert_eq!(v020["ip4"]["ip"], "10.1.0.2/24");
        assert_eq!(v020["ip6"]["ip"], "fd00::2/64");
        assert_eq!(v020["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
    }

    #[test]
    fn round_trip_every_version() {
        let r = sample();
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let back = CniResult::from_value(&r.to_json(v)).unwrap();
            assert_eq!(back.ips, r.ips, "{v}");
            assert_eq!(back.dns, r.dns, "{v}");
        }
    }

    #[test]
    fn bad_interface_index_is_rejected() {
        let v = json!({"cniVersion":"1.0.0","ips":[{"interface":3,"address":"10.0.0.2/24"}]});
        assert_eq!(CniResult::from_value(&v).unwrap_err().code(), 6);
    }

    #[test]
    fn decode_refuses_trailing_data() {
        #[derive(Deserialize, Debug)]
        struct C {}
        decode::<C>(b"{} \n").unwrap();
        for bad in [&b"{} x"[..], b"{}{}", b"{} 1", b"{}]"] {
            let e = decode::<C>(bad).unwrap_err();
            assert_eq!(e.code(), 6, "{e}");
            assert!(e.to_string().contains("not valid JSON"), "{e}");
        }
    }

    #[test]
    fn prev_result_must_be_a_result_object() {
        for bad in [r#""junk""#, "[]", "5"] {
            let conf = format!(r#"{{"cniVersion":"1.0.0","name":"n","prevResult":{bad}}}"#);
            let e = decode::<NetConf>(conf.as_bytes()).unwrap_err();
            assert_eq!(e.code(), 6, "{bad}: {e}");
            assert!(e.to_string().contains("prevResult"), "{e}");
        }
        let n: NetConf = decode(br#"{"prevResult":null}"#).unwrap();
        assert!(n.prev_result().unwrap().is_none());
        // Keys of the result are matched as Go matches them, too.
        let n: NetConf = decode(br#"{"PrevResult":{"cniVersion":"1.0.0","IPs":[{"Address":"10.0.0.2/24"}]}}"#).unwrap();
        assert_eq!(
            n.prev_result().unwrap().unwrap().ips[0].address.to_string(),
            "10.0.0.2/24"
        );
    }

    /// Every integer of a result (interface MTU and index, the route attributes), as a
    /// prevResult too: a number the field holds is taken exactly; any other is code 7 naming
    /// the key and the number as written, never wrapped.
    #[test]
    fn result_numbers_are_refused_never_wrapped() {
        let result = |ifc: &str, ip: &str, route: &str| {
            format!(
                r#"{{"cniVersion":"1.1.0","interfaces":[{{"name":"eth0"{ifc}}}],"ips":[{{"address":"10.0.0.2/24"{ip}}}],"routes":[{{"dst":"0.0.0.0/0"{route}}}]}}"#
            )
        };
        let cases: [(&str, u64); 7] = [
            ("interfaces[0].mtu", u32::MAX.into()),
            ("routes[0].mtu", u32::MAX.into()),
            ("routes[0].advmss", u32::MAX.into()),
            ("routes[0].priority", u32::MAX.into()),
            ("routes[0].table", u32::MAX.into()),
            ("routes[0].scope", u8::MAX.into()),
            ("ips[0].interface", u64::MAX),
        ];
        for (path, max) in cases {
            let of = |lit: &str| {
                let (list, key) = path.split_once("[0].").unwrap();
                let field = format!(r#","{key}":{lit}"#);
                match list {
                    "interfaces" => result(&field, "", ""),
                    "ips" => result("", &field, ""),
                    _ => result("", "", &field),
                }
            };
            let above = (u128::from(max) + 1).to_string();
            for lit in ["-1", "4294968796", "99999999999", above.as_str()] {
                if lit.parse::<u128>().is_ok_and(|v| v <= u128::from(max)) {
                    continue;
                }
                let r = of(lit);
                let e = CniResult::from_slice(r.as_bytes()).unwrap_err();
                assert_eq!(e.code(), 7, "{r}: {e}");
                assert!(e.to_string().contains(&format!("{lit} (key \"{path}\")")), "{r}: {e}");
                // A prevResult is kept as a free-form value first, in which a number beyond 64
                // bits is a float (a type error, code 6).
                if lit == "18446744073709551616" {
                    continue;
                }
                let conf = format!(r#"{{"cniVersion":"1.1.0","name":"n","prevResult":{r}}}"#);
                let n: NetConf = decode(conf.as_bytes()).unwrap();
                let e = n.prev_result().unwrap_err();
                assert_eq!(e.code(), 7, "{conf}: {e}");
                assert!(e.to_string().starts_with("prevResult: invalid result: invalid "), "{e}");
            }
            if path != "ips[0].interface" {
                let r = CniResult::from_slice(of(&max.to_string()).as_bytes()).unwrap();
                let got = match path {
                    "interfaces[0].mtu" => r.interfaces[0].mtu,
                    "routes[0].mtu" => r.routes[0].mtu,
                    "routes[0].advmss" => r.routes[0].advmss,
                    "routes[0].priority" => r.routes[0].priority,
                    "routes[0].table" => r.routes[0].table,
                    _ => r.routes[0].scope.map(u32::from),
                };
                assert_eq!(got.map(u64::from), Some(max), "{path}");
            }
        }
        let e = CniResult::from_slice(result("", "", r#","MTU":4294968796"#).as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid result: invalid mtu 4294968796 (key \"routes[0].mtu\"): must be an integer between 0 and 4294967295"
        );
    }

    #[test]
    fn decode_names_the_field() {
        #[derive(Deserialize, Debug)]
        struct C {
            #[allow(dead_code)]
            mtu: u32,
        }
        let e = decode::<C>(br#"{"mtu":"big"}"#).unwrap_err();
        assert!(e.to_string().contains("mtu"), "{e}");
        assert_eq!(e.code(), 6);
    }
}
