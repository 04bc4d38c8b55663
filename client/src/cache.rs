//! libcni's result cache: one file per attachment, `<cacheDir>/results/<network>-<containerID>-<ifname>`,
//! a JSON object of kind `cniCacheV1` with the network's config (base64, as Go encodes a
//! `[]byte`), the result of the ADD, the `CNI_ARGS` pairs and the capability args. libcni 1.2
//! also records the namespace (`netns`), which GC needs; libcni 1.1 ignores the key. So does it
//! `cnitool`, ours: the record of the `cnitool exec` that owns the attachment (see [`Owner`]).
//! Files are written atomically (a temporary file renamed over), with libcni's modes (0700
//! directories, 0600 files), and not synced to disk: libcni writes them with a plain
//! `ioutil.WriteFile` (api.go, 1.1.2), no fsync, so a runtime on it pays no disk flush per ADD,
//! and neither does ours (a flush cost 0.3 ms and more per `cnitool add`). After a power loss an
//! entry may be missing (never half-written: the rename is atomic); a DEL then runs without a
//! prevResult, as libcni's does without a cache entry.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use cni::{Error, Result};

/// The cache entry's kind.
pub const CNI_CACHE_V1: &str = "cniCacheV1";

/// Where libcni keeps its cache unless told otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

/// The `cnitool exec` that made an attachment and removes it when it ends: a later stale-only
/// GC deletes the attachment when that process is gone (a SIGKILLed exec), and removes the
/// namespace it created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The process's start time (field 22 of `/proc/<pid>/stat`), so that a reused pid is
    /// not taken for the owner.
    #[serde(rename = "startTime")]
    pub start_time: u64,
    /// The namespace was created by that exec, and goes with it.
    #[serde(rename = "ownsNetns", default)]
    pub owns_netns: bool,
}

/// One cache file, as libcni's `cachedInfo` (same keys, same order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedInfo {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    /// The network config list, as Go encodes `[]byte` (base64).
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    #[serde(rename = "ifName")]
    pub ifname: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Option::is_none")]
    pub cni_args: Option<Vec<[String; 2]>>,
    #[serde(rename = "capabilityArgs", default, skip_serializing_if = "Option::is_none")]
    pub capability_args: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Ours: the exec that owns the attachment.
    #[serde(rename = "cnitool", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(Vec::new()),
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The temporary file of an entry being written ([`Cache::begin`]); removed when dropped
/// without a [`commit`](Pending::commit).
#[derive(Debug)]
pub struct Pending {
    tmp: PathBuf,
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Pending {
    /// Writes `info` (the entry of the attachment `begin` was given) and renames it into place.
    pub fn commit(mut self, info: &CachedInfo) -> Result<()> {
        let fail = |path: &Path, e| Error::io(format!("writing the cache entry {}", path.display()), e);
        debug_assert!(self
            .path
            .ends_with(format!("{}-{}-{}", info.network_name, info.container_id, info.ifname)));
        let bytes = serde_json::to_vec(info).map_err(|e| Error::internal(format!("encoding the cache entry: {e}")))?;
        let mut f = self.file.take().expect("a pending entry has its file");
        f.write_all(&bytes).map_err(|e| fail(&self.path, e))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| fail(&self.path, e))?;
        // Renamed: nothing for drop to remove.
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// An attachment found in the cache.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub file: PathBuf,
    pub info: CachedInfo,
    /// When the file was last written (the ADD).
    pub modified: Option<std::time::SystemTime>,
}

/// The cache in `dir` (e.g. `/var/lib/cni`).
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn results(&self) -> PathBuf {
        self.dir.join("results")
    }

    /// The file of one attachment (libcni's `getCacheFilePath`).
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> Result<PathBuf> {
        if network.is_empty() || container_id.is_empty() || ifname.is_empty() {
            return Err(Error::invalid_env(format!(
                "cache file path requires network name (\"{network}\"), container ID (\"{container_id}\"), and interface name (\"{ifname}\")"
            )));
        }
        Ok(self.results().join(format!("{network}-{container_id}-{ifname}")))
    }

    /// Writes one entry, atomically (temp file + rename; no fsync, as libcni).
    pub fn write(&self, info: &CachedInfo) -> Result<()> {
        self.begin(&info.network_name, &info.container_id, &info.ifname)?
            .commit(info)
    }

    /// Creates the temporary file of one entry, to be written by [`Pending::commit`]: the
    /// creation can be done ahead, while the plugins run (on a busy ext4 creating a file costs
    /// up to a millisecond, as much as the rest of a `cnitool add`).
    pub fn begin(&self, network: &str, container_id: &str, ifname: &str) -> Result<Pending> {
        let path = self.path(network, container_id, ifname)?;
        let dir = self.results();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating the cache directory {}", dir.display()), e))?;
        let tmp = dir.join(format!(
            ".{}.tmp.{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(format!("writing the cache entry {}", path.display()), e))?;
        Ok(Pending {
            tmp,
            path,
            file: Some(file),
        })
    }

    /// The entry of one attachment; `None` when there is none (libcni ignores read errors).
    /// An entry of another kind is an error, as libcni's `getCachedConfig`.
    pub fn read(&self, network: &str, container_id: &str, ifname: &str) -> Result<Option<CachedInfo>> {
        let path = self.path(network, container_id, ifname)?;
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        let info: CachedInfo = serde_json::from_slice(&bytes).map_err(|e| {
            Error::decode(format!(
                "failed to unmarshal cached network \"{network}\" config {}: {e}",
                path.display()
            ))
        })?;
        if info.kind != CNI_CACHE_V1 {
            return Err(Error::decode(format!(
                "read cached network \"{network}\" config has wrong kind: {}",
                info.kind
            )));
        }
        Ok(Some(info))
    }

    /// Removes the entry of one attachment (gone already is fine).
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(network, container_id, ifname)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing the cache entry {}", path.display()), e)),
        }
    }

    /// Every attachment in the cache (of `network` when given), sorted by file name, as
    /// libcni 1.2's `GetCachedAttachments`: entries of another kind, that cannot be parsed, or
    /// that lack the network, container id or interface are skipped.
    pub fn attachments(&self, network: Option<&str>) -> Result<Vec<Attachment>> {
        let dir = self.results();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing the cache {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let file = entry.path();
            let Ok(bytes) = std::fs::read(&file) else { continue };
            let Ok(info) = serde_json::from_slice::<CachedInfo>(&bytes) else {
                continue;
            };
            if info.kind != CNI_CACHE_V1
                || info.network_name.is_empty()
                || info.container_id.is_empty()
                || info.ifname.is_empty()
                || network.is_some_and(|n| n != info.network_name)
            {
                continue;
            }
            let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
            out.push(Attachment { file, info, modified });
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }
}

/// The `config` of an entry as text (for tests and messages).
pub fn config_text(info: &CachedInfo) -> String {
    String::from_utf8_lossy(&info.config).into_owned()
}

/// Encodes bytes as Go encodes a `[]byte` in JSON.
pub fn go_bytes(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> CachedInfo {
        CachedInfo {
            kind: CNI_CACHE_V1.into(),
            container_id: "c1".into(),
            config: b"{}".to_vec(),
            ifname: "eth0".into(),
            network_name: "net".into(),
            netns: "/run/netns/x".into(),
            cni_args: None,
            capability_args: None,
            result: Some(serde_json::json!({"cniVersion": "1.0.0"})),
            owner: None,
        }
    }

    #[test]
    fn an_entry_begun_ahead_is_renamed_into_place_or_removed() {
        let dir = std::env::temp_dir().join(format!("cni-client-cache-{}", std::process::id()));
        let cache = Cache::new(&dir);
        let names = || -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir.join("results"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        // Given up (the ADD failed): the temporary file goes.
        drop(cache.begin("net", "c1", "eth0").unwrap());
        assert!(names().is_empty(), "{:?}", names());
        // Committed: only the entry, libcni's place and mode.
        let p = cache.begin("net", "c1", "eth0").unwrap();
        assert_eq!(names().len(), 1, "the temporary file exists ahead");
        assert_eq!(cache.read("net", "c1", "eth0").unwrap().map(|i| i.container_id), None);
        p.commit(&info()).unwrap();
        assert_eq!(names(), ["net-c1-eth0"]);
        let got = cache.read("net", "c1", "eth0").unwrap().unwrap();
        assert_eq!(got.result, info().result);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("results/net-c1-eth0"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
