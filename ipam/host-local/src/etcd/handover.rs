//! The hand-over of a call on the etcd store: a program with the store linked in
//! ([`register`]) opens it; one without it finds [`HELPER`] and executes it with the same
//! arguments, environment and config ([`helper_for`], [`exec_ops`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cni::{Error, Result};
use serde_json::Value;

use super::EtcdConfig;
use crate::store::Store;

/// The program with the etcd client linked in: a complete host-local, installed beside it.
pub const HELPER: &str = "host-local-etcd";

/// Opens a network's etcd store: `(config, network name, the container the call is about)`
/// (its attachment index comes with the store's first read).
pub type Opener = fn(&EtcdConfig, &str, Option<&str>) -> Result<Box<dyn Store>>;

static OPENER: OnceLock<Opener> = OnceLock::new();

/// Links the etcd store into this program ([`HELPER`]'s `main` does).
pub fn register(open: Opener) {
    let _ = OPENER.set(open);
}

/// Opens the etcd store with the registered [`Opener`]. A program without one never gets
/// here for a config it recognised (it hands the call over first); one that did not recognise
/// the config as etcd's (an escaped `"type"`) gets a clear error.
pub fn open(conf: &EtcdConfig, network: &str, att: Option<&str>) -> Result<Box<dyn Store>> {
    match OPENER.get() {
        Some(open) => open(conf, network, att),
        None => Err(Error::invalid_config(format!(
            "ipam.store selects etcd, whose client is in {HELPER}, not in this host-local: write \"type\": \"etcd\" plainly"
        ))),
    }
}

/// Whether this program has the etcd store linked in.
pub fn linked() -> bool {
    OPENER.get().is_some()
}

/// Whether the config on stdin selects the etcd store (`ipam.store.type` `"etcd"`, keys
/// matched as everywhere, Go's way). Without the word in it, this is a substring search.
pub fn selects_etcd(stdin: &[u8]) -> bool {
    if !stdin.windows(4).any(|w| w == b"etcd") {
        return false;
    }
    let Ok(v) = serde_json::from_slice::<Value>(stdin) else {
        return false;
    };
    /// The member `name` of object `v`: the exact key, else one matching it as Go matches.
    fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
        let m = v.as_object()?;
        m.get(name).or_else(|| {
            m.iter()
                .find(|(k, _)| cni::gojson::key_matches(k, name))
                .map(|(_, v)| v)
        })
    }
    field(&v, "ipam")
        .and_then(|i| field(i, "store"))
        .and_then(|s| s.get("type"))
        .is_some_and(|t| t == "etcd")
}

/// The [`HELPER`] that a call with this config goes to, when this program lacks the etcd store
/// and the config selects it; `Ok(None)` otherwise. The helper is looked for beside this
/// program's file (where `make install` puts it), then in `CNI_PATH`.
pub fn helper_for(stdin: &[u8], cni_path: Option<&str>) -> Result<Option<PathBuf>> {
    if linked() || !selects_etcd(stdin) {
        return Ok(None);
    }
    helper(cni_path).map(Some)
}

/// The operator commands (`host-local leases|release-host|import`, run with arguments and
/// without `CNI_COMMAND`) are in [`HELPER`]: runs it in place of this process with the same
/// arguments and environment. Returns only on failure, with the exit status to end with.
pub fn exec_ops() -> i32 {
    let e = match helper(std::env::var("CNI_PATH").ok().as_deref()) {
        Ok(p) => cni::skel::exec_in_place(&p, None),
        Err(e) => e,
    };
    cni::log!("host-local: the operator commands are in {HELPER}: {e}");
    1
}

/// Finds [`HELPER`] (see [`helper_for`]); never this very program (which would hand over to
/// itself for ever).
pub fn helper(cni_path: Option<&str>) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::read_link("/proc/self/exe").ok();
    let mut dirs: Vec<PathBuf> = me
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    dirs.extend(
        cni_path
            .unwrap_or("")
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
    );
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let self_id = id(Path::new("/proc/self/exe"));
    // Directory by directory, with the lookup of a delegation, so that a copy of this very
    // program in the first directory does not hide the helper in the next.
    for d in &dirs {
        if let Ok(p) = cni::delegate::find_plugin(HELPER, std::slice::from_ref(d)) {
            if id(&p) != self_id {
                return Ok(p);
            }
        }
    }
    Err(Error::invalid_config(format!(
        "ipam.store selects etcd, whose client is in {HELPER}: not found beside this host-local nor in CNI_PATH \
         (looked in {}); install it beside host-local (make install does)",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
