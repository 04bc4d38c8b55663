//! What DEL and GC read of a config: only what their teardown needs, each part leniently.
//!
//! A teardown that fails leaves a lease, a link and rules behind for ever, so DEL and GC
//! succeed for any config from which they can read the network name, the IPAM type and (for
//! host-local) the store's location; every other part that does not decode is left out, as if
//! it were absent, instead of failing the call. What an ADD would refuse (a route without
//! `dst`, an `mtu` of `"big"`, a bad MAC or DNS) does not stop the teardown. The `cniVersion`
//! check (code 1) stays as it is.
//!
//! The tool is [`Lenient`]: a field of that type holds its value, or why it does not decode.

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
use crate::types::{Attachment, IpamRef, NetConf};

/// A config key decoded leniently: absent, its value, or why it does not decode (a message).
///
/// Decoding a `Lenient<T>` never fails: the error of `T` is kept instead. That is only sound
/// for a deserializer of an already parsed document, as configs are decoded here
/// ([`crate::types::decode`]): a failure leaves nothing half read. In a struct decoded with
/// [`crate::types::decode`], make every field `Lenient` (the path of an error that is kept is
/// remembered by the decoder and would name the wrong key in a later error), and name the key
/// in the message yourself ([`Lenient::required`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Lenient<T> {
    /// The key is not there (or is `null`).
    #[default]
    Absent,
    Ok(T),
    /// The key is there but does not decode as `T`: why.
    Bad(String),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match T::deserialize(d) {
            Ok(v) => Lenient::Ok(v),
            Err(e) => Lenient::Bad(e.to_string()),
        })
    }
}

impl<T> Lenient<T> {
    /// The value, if it decoded.
    pub fn ok(self) -> Option<T> {
        match self {
            Lenient::Ok(v) => Some(v),
            _ => None,
        }
    }

    /// The value, or `None` when absent; why it does not decode otherwise.
    pub fn value(self) -> std::result::Result<Option<T>, String> {
        match self {
            Lenient::Absent => Ok(None),
            Lenient::Ok(v) => Ok(Some(v)),
            Lenient::Bad(why) => Err(why),
        }
    }

    /// The value, or `None` when absent; a value that does not decode is the decode error
    /// (code 6) naming `key` (e.g. `ipam.dataDir`): for what a teardown cannot do without.
    pub fn required(self, key: &str) -> Result<Option<T>> {
        self.value()
            .map_err(|why| Error::decode(format!("invalid network config: field \"{key}\": {why}")))
    }
}

impl Lenient<bool> {
    /// A switch of something an ADD made, as its teardown reads it: its value; absent, off;
    /// a value that does not read, on (what the ADD may have made is removed, and removing
    /// what is not there does nothing).
    pub fn teardown_switch(&self) -> bool {
        match self {
            Lenient::Absent => false,
            Lenient::Ok(b) => *b,
            Lenient::Bad(_) => true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct TeardownIpam {
    #[serde(rename = "type", default)]
    ipam_type: Lenient<String>,
}

/// The common keys, every one lenient (see [`NetConf::decode_for_teardown`]).
#[derive(Debug, Default, Deserialize)]
struct TeardownNet {
    #[serde(rename = "cniVersion", default)]
    cni_version: Lenient<String>,
    #[serde(default)]
    name: Lenient<String>,
    #[serde(rename = "type", default)]
    plugin_type: Lenient<String>,
    #[serde(default)]
    ipam: Lenient<TeardownIpam>,
    #[serde(default)]
    dns: Lenient<crate::types::Dns>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Lenient<crate::types::MacArg>,
    #[serde(default)]
    args: Lenient<crate::types::Args>,
    #[serde(rename = "prevResult", default)]
    prev_result: Lenient<serde_json::Map<String, serde_json::Value>>,
}

/// GC's keep-list, which GC cannot do without: decoded strictly (a keep-list that does not
/// read must never be taken for an empty one, which would release everything).
#[derive(Debug, Default, Deserialize)]
struct GcKeys {
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "cni.dev/attachments", default)]
    attachments: Option<Vec<Attachment>>,
}

/// What a plugin's DEL reads of its own keys (a struct of [`Lenient`] switches): decoded from
/// the config as every config is (Go's key matching), by [`Teardown::decode`].
pub trait Teardown: serde::de::DeserializeOwned {
    fn decode(stdin: &[u8]) -> Result<Self> {
        crate::types::decode(stdin)
    }
}

impl NetConf {
    /// The common keys as DEL reads them: `cniVersion`, `name` and `ipam.type` must decode
    /// (as strings; code 6 naming the key otherwise); `type`, `dns`, `runtimeConfig`, `args`
    /// and `prevResult` are left out when they do not decode; the GC keys are not read.
    pub fn decode_for_teardown(stdin: &[u8]) -> Result<NetConf> {
        let t: TeardownNet = crate::types::decode(stdin)?;
        let ipam = match t.ipam.required("ipam")? {
            None => None,
            Some(i) => Some(IpamRef {
                ipam_type: i.ipam_type.required("ipam.type")?.unwrap_or_default(),
            }),
        };
        Ok(NetConf {
            cni_version: t.cni_version.required("cniVersion")?.unwrap_or_default(),
            name: t.name.required("name")?.unwrap_or_default(),
            plugin_type: t.plugin_type.ok().unwrap_or_default(),
            ipam,
            dns: t.dns.ok(),
            runtime_config: t.runtime_config.ok(),
            args: t.args.ok(),
            prev_result: t.prev_result.ok(),
            valid_attachments: None,
            attachments: None,
        })
    }

    /// The common keys as GC reads them: as DEL ([`NetConf::decode_for_teardown`]), and the
    /// keep-list (`cni.dev/valid-attachments`, `cni.dev/attachments`) strictly.
    pub fn decode_for_gc(stdin: &[u8]) -> Result<NetConf> {
        let mut conf = NetConf::decode_for_teardown(stdin)?;
        let keys: GcKeys = crate::types::decode(stdin)?;
        conf.valid_attachments = keys.valid_attachments;
        conf.attachments = keys.attachments;
        Ok(conf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teardown_reads_past_what_it_does_not_need() {
        let conf = br#"{"cniVersion":"1.0.0","Name":"n","type":5,"IPAM":{"Type":"host-local","routes":[{}]},
            "dns":{"nameservers":"x"},"runtimeConfig":5,"args":{"cni":7},"prevResult":"junk",
            "cni.dev/valid-attachments":"x"}"#;
        let strict = crate::types::decode::<NetConf>(conf).unwrap_err();
        assert_eq!(strict.code(), 6, "{strict}");
        let n = NetConf::decode_for_teardown(conf).unwrap();
        assert_eq!((n.cni_version.as_str(), n.name.as_str()), ("1.0.0", "n"));
        assert_eq!(n.ipam_type(), Some("host-local"));
        assert_eq!(n.plugin_type, "");
        assert!(n.dns.is_none() && n.runtime_config.is_none() && n.args.is_none() && n.prev_result.is_none());
        // What does decode is kept.
        let n = NetConf::decode_for_teardown(
            br#"{"cniVersion":"1.0.0","name":"n","type":"bridge","dns":{"nameservers":["10.0.0.1"]}}"#,
        )
        .unwrap();
        assert_eq!(
            (n.plugin_type.as_str(), n.dns.unwrap().nameservers.len()),
            ("bridge", 1)
        );
    }

    #[test]
    fn teardown_needs_the_name_the_version_and_the_ipam_type() {
        for (conf, key) in [
            (r#"{"cniVersion":1,"name":"n"}"#, "\"cniVersion\""),
            (r#"{"cniVersion":"1.0.0","name":["n"]}"#, "\"name\""),
            (r#"{"cniVersion":"1.0.0","name":"n","ipam":"host-local"}"#, "\"ipam\""),
            (
                r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":{}}}"#,
                "\"ipam.type\"",
            ),
        ] {
            let e = NetConf::decode_for_teardown(conf.as_bytes()).unwrap_err();
            assert_eq!(e.code(), 6, "{conf}: {e}");
            assert!(e.to_string().contains(key), "{conf}: {e}");
        }
        let e = NetConf::decode_for_teardown(b"{\"name\": ").unwrap_err();
        assert_eq!(e.code(), 6, "{e}");
    }

    #[test]
    fn gc_reads_its_keep_list_strictly() {
        let n = NetConf::decode_for_gc(
            br#"{"cniVersion":"1.1.0","name":"n","dns":5,"cni.dev/valid-attachments":[{"containerID":"c","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(n.gc_keep().len(), 1);
        let e =
            NetConf::decode_for_gc(br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"ifname":5}]}"#)
                .unwrap_err();
        assert_eq!(e.code(), 6, "{e}");
        assert!(e.to_string().contains("cni.dev/valid-attachments"), "{e}");
    }

    #[test]
    fn switches_of_a_teardown() {
        #[derive(Deserialize)]
        struct S {
            #[serde(default)]
            a: Lenient<bool>,
            #[serde(default)]
            b: Lenient<bool>,
            #[serde(default)]
            c: Lenient<bool>,
            #[serde(default)]
            d: Lenient<bool>,
        }
        let s: S = crate::types::decode(br#"{"a":true,"B":false,"c":"yes","d":null}"#).unwrap();
        assert!(s.a.teardown_switch());
        assert!(!s.b.teardown_switch());
        assert!(s.c.teardown_switch(), "unreadable: on");
        assert!(!s.d.teardown_switch(), "null: absent");
        assert!(matches!(s.c, Lenient::Bad(ref m) if m.contains("expected a boolean")));
    }
}
