//! `ipam.store`: which lease store a network uses. Absent (or `"type": "disk"`): the on-disk
//! store, exactly as without the key. `"type": "etcd"`: the etcd store.
//!
//! ```json
//! "store": {
//!   "type": "etcd",
//!   "endpoints": ["http://127.0.0.1:2379", "http://127.0.0.1:22379"],
//!   "prefix": "/cni-rs/host-local",
//!   "host": "node1",
//!   "timeout": 5,
//!   "tls": {"ca": "/etc/cni/etcd/ca.pem", "cert": "/etc/cni/etcd/client.pem", "key": "/etc/cni/etcd/client-key.pem"}
//! }
//! ```
//!
//! This module reads the config; [`handover`] links the store in or hands the call over.
//!
//! **The etcd client is not in this binary.** It (tonic, prost, rustls) would nearly double the
//! file that every bridge, macvlan and host-local call starts, on the disk path too. It lives in
//! [`HELPER`] (`ipam/host-local-etcd`), a complete host-local with the etcd store linked in
//! (see [`register`]). A host-local without it that is given a config selecting etcd executes
//! that helper with the same arguments, environment and config ([`helper_for`]): in place of
//! itself when it runs as its own process, as the delegated child when bridge or macvlan would
//! have run it in-process. The disk path pays one substring search of the config.

use std::path::PathBuf;
use std::time::Duration;

use cni::{Error, Result};
use serde::Deserialize;
use serde_json::Value;

/// Where keys live unless `ipam.store.prefix` says otherwise.
pub const DEFAULT_PREFIX: &str = "/cni-rs/host-local";
/// The deadline of one call unless `ipam.store.timeout` says otherwise: well below the
/// runtimes' CNI timeouts.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest deadline accepted.
pub const MAX_TIMEOUT_SECS: f64 = 10.0;

/// Client certificate files (contents are read at connect time and never printed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The etcd store of a network.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// `http://` or `https://` URLs.
    pub endpoints: Vec<String>,
    /// Key prefix, without a trailing `/`.
    pub prefix: String,
    /// The name of this host, recorded in every lease it makes; GC only touches these.
    pub host: String,
    pub tls: Option<TlsFiles>,
    /// The deadline of one call: etcd trouble past it is code 11.
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    cert: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    tls: Option<RawTls>,
}

fn invalid(msg: String) -> Error {
    Error::invalid_config(msg)
}

/// The node's host name, as `hostname` prints it.
pub fn node_hostname() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return Err(Error::io("reading the host name", std::io::Error::last_os_error()));
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn valid_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 253 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl EtcdConfig {
    /// Reads `ipam.store`; `Ok(None)` for the disk store.
    pub fn from_json(v: &Value) -> Result<Option<EtcdConfig>> {
        let raw: RawStore = serde_json::from_value(v.clone()).map_err(|e| invalid(format!("ipam.store: {e}")))?;
        match raw.kind.as_deref().unwrap_or("") {
            "disk" => return Ok(None),
            "etcd" => {}
            other => {
                return Err(invalid(format!(
                    "ipam.store.type \"{}\" is not a lease store: use \"etcd\" or \"disk\"",
                    other.escape_debug()
                )))
            }
        }
        let tls = raw.tls.map(|t| TlsFiles {
            ca: t.ca.filter(|s| !s.is_empty()).map(PathBuf::from),
            cert: t.cert.filter(|s| !s.is_empty()).map(PathBuf::from),
            key: t.key.filter(|s| !s.is_empty()).map(PathBuf::from),
        });
        if let Some(t) = &tls {
            if t.cert.is_some() != t.key.is_some() {
                return Err(invalid(
                    "ipam.store.tls: cert and key go together (a client certificate and its key)".into(),
                ));
            }
        }
        let endpoints = raw.endpoints.unwrap_or_default();
        if endpoints.is_empty() {
            return Err(invalid(
                "ipam.store.endpoints is missing: list the etcd client URLs (e.g. \"http://127.0.0.1:2379\")".into(),
            ));
        }
        let mut eps = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            let e = e.trim();
            let url = if e.contains("://") {
                e.to_string()
            } else if tls.is_some() {
                format!("https://{e}")
            } else {
                format!("http://{e}")
            };
            let ok = (url.starts_with("http://") || url.starts_with("https://")) && url.len() > "https://".len();
            if !ok {
                return Err(invalid(format!(
                    "ipam.store.endpoints[{i}] \"{}\" is not an http:// or https:// URL",
                    e.escape_debug()
                )));
            }
            if tls.is_some() && url.starts_with("http://") {
                return Err(invalid(format!(
                    "ipam.store.endpoints[{i}] \"{}\" is plain http but ipam.store.tls is set: use https://",
                    e.escape_debug()
                )));
            }
            eps.push(url);
        }
        let prefix = raw.prefix.unwrap_or_else(|| DEFAULT_PREFIX.into());
        let prefix = prefix.trim_end_matches('/').to_string();
        if prefix.is_empty() {
            return Err(invalid(
                "ipam.store.prefix is empty: give a key prefix such as \"/cni-rs/host-local\"".into(),
            ));
        }
        let host = match raw.host.filter(|h| !h.is_empty()) {
            Some(h) => h,
            None => node_hostname()?,
        };
        if !valid_host(&host) {
            return Err(invalid(format!(
                "ipam.store.host \"{}\" is not a host name (letters, digits, '-', '.', '_')",
                host.escape_debug()
            )));
        }
        let timeout = match raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) if t > 0.0 && t <= MAX_TIMEOUT_SECS => Duration::from_secs_f64(t),
            Some(t) => {
                return Err(invalid(format!(
                    "ipam.store.timeout {t} is out of range: seconds, more than 0 and at most {MAX_TIMEOUT_SECS}"
                )))
            }
        };
        Ok(Some(EtcdConfig {
            endpoints: eps,
            prefix,
            host,
            tls,
            timeout,
        }))
    }
}

pub mod handover;
pub use handover::{exec_ops, helper, helper_for, linked, open, register, selects_etcd, Opener, HELPER};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_checks() {
        let c = EtcdConfig::from_json(&json!({"type": "etcd", "endpoints": ["127.0.0.1:2379"], "host": "a"}))
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(EtcdConfig::from_json(&json!({"type": "disk"})).unwrap(), None);
        let e = EtcdConfig::from_json(&json!({"type": "etcd"})).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("ipam.store.endpoints"), "{e}");
        let e = EtcdConfig::from_json(&json!({"type": "etcd", "endpoints": ["x:1"], "timeout": 30})).unwrap_err();
        assert!(e.to_string().contains("ipam.store.timeout"), "{e}");
        let e = EtcdConfig::from_json(&json!({"type": "zk"})).unwrap_err();
        assert!(e.to_string().contains("ipam.store.type \"zk\""), "{e}");
        let e =
            EtcdConfig::from_json(&json!({"type": "etcd", "endpoints": ["x:1"], "tls": {"cert": "/c"}})).unwrap_err();
        assert!(e.to_string().contains("cert and key"), "{e}");
        let e = EtcdConfig::from_json(&json!({"type": "etcd", "endpoints": ["x:1"], "bogus": 1})).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn which_configs_go_to_the_helper() {
        let etcd =
            |ipam: Value| serde_json::to_vec(&json!({"cniVersion": "1.1.0", "name": "n", "ipam": ipam})).unwrap();
        assert!(selects_etcd(&etcd(
            json!({"type": "host-local", "store": {"type": "etcd"}})
        )));
        // Keys are matched as Go matches them.
        assert!(selects_etcd(&etcd(
            json!({"type": "host-local", "Store": {"type": "etcd"}})
        )));
        assert!(selects_etcd(br#"{"IPAM": {"store": {"type": "etcd"}}}"#));
        assert!(!selects_etcd(&etcd(json!({"type": "host-local"}))));
        assert!(!selects_etcd(&etcd(
            json!({"type": "host-local", "store": {"type": "disk"}})
        )));
        assert!(!selects_etcd(&etcd(
            json!({"type": "host-local", "dataDir": "/run/etcd"})
        )));
        assert!(!selects_etcd(b"not json etcd"));
        // Without the etcd store linked in (unit tests do not register it), such a config goes
        // to the helper, and a missing helper is a clear error naming it.
        assert!(!linked());
        assert_eq!(helper_for(&etcd(json!({"type": "host-local"})), None).unwrap(), None);
        let e = helper_for(&etcd(json!({"store": {"type": "etcd"}})), Some("/nonexistent")).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(
            e.to_string().contains("host-local-etcd") && e.to_string().contains("/nonexistent"),
            "{e}"
        );
    }
}
