//! The runtime side of CNI, as libcni (containernetworking/cni, Debian's 1.1.2, with the GC and
//! STATUS of libcni 1.2 / spec 1.1.0): what a Rust runtime embeds, and what `cnitool` is made
//! of.
//!
//! - [`conf`]: network configs found by name in a directory (libcni's lookup order), and the
//!   config each plugin is given;
//! - [`CniConfig`]: a plugin chain run for ADD (in order, each plugin getting the previous
//!   result), CHECK and DEL (in reverse, with the cached result), GC and STATUS;
//! - [`cache`]: the result cache in libcni's place and format, so that a runtime on libcni
//!   can CHECK or DEL what this library added and the other way round;
//! - [`goutil`]: the upstream cnitool's container id, Go's path cleaning, libcni's versions.
//!
//! ```no_run
//! use cni_client::{conf, CniConfig, RuntimeConf};
//! let list = conf::load_conf_list("/etc/cni/net.d".as_ref(), "rsbr-v4")?;
//! let cni = CniConfig::new(vec!["/opt/cni/bin".into()], "/var/lib/cni");
//! let rt = RuntimeConf::new("ctr1", "/run/netns/ctr1", "eth0");
//! let result = cni.add_network_list(&list, &rt)?;
//! println!("{result}");
//! cni.del_network_list(&list, &rt)?;
//! # Ok::<(), cni::Error>(())
//! ```

pub mod cache;
pub mod conf;
pub mod goutil;
pub mod invoke;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

pub use cache::{Attachment, Cache, CachedInfo, Owner};
use cni::{Error, Errors, Result};
pub use conf::{NetworkConfigList, PluginConf};

/// The arguments of one attachment beside the network config (libcni's `RuntimeConf`).
#[derive(Debug, Clone, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability args: each plugin gets in `runtimeConfig` those its `capabilities` declare.
    pub capability_args: Option<Map<String, Value>>,
    /// The `cnitool exec` owning the attachment (recorded in the cache).
    pub owner: Option<Owner>,
}

impl RuntimeConf {
    pub fn new(container_id: &str, netns: &str, ifname: &str) -> RuntimeConf {
        RuntimeConf {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            ..Default::default()
        }
    }

    fn args_string(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// A plugin chain runner: the plugin directories and the cache.
#[derive(Debug, Clone)]
pub struct CniConfig {
    pub path: Vec<PathBuf>,
    pub cache: Cache,
    /// The deadline of one plugin call.
    pub timeout: Duration,
    /// Plugins run in process groups of their own: a Ctrl-C at the terminal (a signal to the
    /// foreground process group) then does not kill one half-way through its work.
    pub own_process_group: bool,
    /// Plugins' stderr is passed on when each ends, without the lines that repeat the error
    /// it returns (see [`invoke::How::drop_error_echo`]); libcni passes it through as it
    /// comes (the default).
    pub drop_error_echo: bool,
}

/// The deadline of one plugin call unless set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// libcni's `pluginDescription`.
fn describe(p: &PluginConf) -> String {
    if p.name.is_empty() {
        format!("type=\"{}\"", p.plugin_type)
    } else {
        format!("type=\"{}\" name=\"{}\"", p.plugin_type, p.name)
    }
}

/// A plugin's error, with the plugin and the verb, keeping its code.
fn plugin_failed(p: &PluginConf, verb: &str, e: Error) -> Error {
    let code = e.code();
    e.context(format!("plugin {} failed ({verb}): code {code}", describe(p)))
}

fn check_name(what: &str, code: u32, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::new(code, format!("missing {what}")));
    }
    if !cni::env::valid_name(s) {
        return Err(Error::new(
            code,
            format!("invalid {what} \"{}\": {}", s.escape_debug(), cni::env::NAME_RULE),
        ));
    }
    Ok(())
}

impl CniConfig {
    pub fn new(path: Vec<PathBuf>, cache_dir: impl Into<PathBuf>) -> CniConfig {
        CniConfig {
            path,
            cache: Cache::new(cache_dir),
            timeout: DEFAULT_TIMEOUT,
            own_process_group: false,
            drop_error_echo: false,
        }
    }

    fn path_string(&self) -> String {
        self.path
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The config plugin `p` of `list` is given (libcni's `buildOneConfig`): the list's `name`
    /// and `cniVersion`, the previous result, and in `runtimeConfig` only the capability args
    /// that the plugin declares.
    pub fn plugin_config(list: &NetworkConfigList, p: &PluginConf, prev: Option<&Value>, rt: &RuntimeConf) -> Vec<u8> {
        let mut conf = p.conf.clone();
        conf.insert("name".into(), Value::String(list.name.clone()));
        conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let mut rc = Map::new();
        if let Some(caps) = &rt.capability_args {
            for (cap, on) in &p.capabilities {
                if let (true, Some(v)) = (*on, caps.get(cap)) {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
        if !rc.is_empty() {
            rc.sort_keys();
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        conf.sort_keys();
        serde_json::to_vec(&Value::Object(conf)).expect("a JSON value serializes")
    }

    fn start(
        &self,
        list: &NetworkConfigList,
        p: &PluginConf,
        verb: &str,
        prev: Option<&Value>,
        rt: &RuntimeConf,
    ) -> Result<invoke::Running> {
        let bin = invoke::find_in_path(&p.plugin_type, &self.path)?;
        let stdin = Self::plugin_config(list, p, prev, rt);
        let args = invoke::Args {
            command: verb,
            container_id: &rt.container_id,
            netns: &rt.netns,
            plugin_args: rt.args_string(),
            ifname: &rt.ifname,
            path: self.path_string(),
        };
        let how = invoke::How {
            timeout: self.timeout,
            own_group: self.own_process_group,
            drop_error_echo: self.drop_error_echo,
        };
        invoke::start_plugin(&bin, stdin, &args, &how)
    }

    fn run(
        &self,
        list: &NetworkConfigList,
        p: &PluginConf,
        verb: &str,
        prev: Option<&Value>,
        rt: &RuntimeConf,
    ) -> Result<Vec<u8>> {
        self.start(list, p, verb, prev, rt)?.finish()
    }

    /// ADD: the plugins in order, each given the previous one's result; the last result is
    /// cached and returned. The cache entry's file is created while the first plugin starts
    /// (see [`Cache::begin`]), and written after the last.
    pub fn add_network_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<Value> {
        let mut result: Option<Value> = None;
        let mut pending: Option<Result<cache::Pending>> = None;
        for p in &list.plugins {
            let out = (|| {
                invoke::find_in_path(&p.plugin_type, &self.path)?;
                check_name("containerID", cni::error::code::UNKNOWN_CONTAINER, &rt.container_id)?;
                check_name("network name", cni::error::code::INVALID_CONFIG, &list.name)?;
                cni::env::check_ifname(&rt.ifname).map_err(|why| {
                    Error::invalid_env(format!(
                        "invalid interface name \"{}\": {why}",
                        rt.ifname.escape_debug()
                    ))
                })?;
                let call = self.start(list, p, "ADD", result.as_ref(), rt)?;
                if pending.is_none() {
                    pending = Some(self.cache.begin(&list.name, &rt.container_id, &rt.ifname));
                }
                call.finish()
            })()
            .map_err(|e| plugin_failed(p, "add", e))?;
            let v: Value = serde_json::from_slice(&out)
                .map_err(|e| plugin_failed(p, "add", Error::decode(format!("its result is not valid JSON: {e}"))))?;
            if !v.is_object() {
                return Err(plugin_failed(
                    p,
                    "add",
                    Error::decode("its result is not a JSON object"),
                ));
            }
            result = Some(v);
        }
        let result = result.unwrap_or_else(|| Value::Object(Map::new()));
        let info = CachedInfo {
            kind: cache::CNI_CACHE_V1.into(),
            container_id: rt.container_id.clone(),
            config: list.bytes.clone(),
            ifname: rt.ifname.clone(),
            network_name: list.name.clone(),
            netns: rt.netns.clone(),
            cni_args: (!rt.args.is_empty()).then(|| rt.args.iter().map(|(k, v)| [k.clone(), v.clone()]).collect()),
            capability_args: rt.capability_args.clone().filter(|m| !m.is_empty()),
            result: Some(result.clone()),
            owner: rt.owner.clone(),
        };
        // A file that could not be created ahead is tried once more, for the error.
        match pending {
            Some(Ok(p)) => p.commit(&info),
            _ => self.cache.write(&info),
        }
        .map_err(|e| e.context(format!("failed to set network \"{}\" cached result", list.name)))?;
        Ok(result)
    }

    /// The cached result of an attachment, in the list's version (libcni's `getCachedResult`:
    /// a file of another kind is read as a bare result, the cache of old libcni versions).
    pub fn cached_result(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<Option<Value>> {
        let path = self.cache.path(&list.name, &rt.container_id, &rt.ifname)?;
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        let fail = |e: Error| e.context(format!("failed to get network \"{}\" cached result", list.name));
        let result = match serde_json::from_slice::<CachedInfo>(&bytes) {
            Ok(info) if info.kind == cache::CNI_CACHE_V1 => match info.result {
                Some(r) => r,
                None => return Ok(None),
            },
            _ => serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| fail(Error::decode(format!("{}: {e}", path.display()))))?,
        };
        if result.get("cniVersion").and_then(Value::as_str) == Some(list.cni_version.as_str()) {
            return Ok(Some(result));
        }
        // Converted to the config's version, as libcni does (a config changed since the ADD).
        let r = cni::CniResult::from_value(&result).map_err(fail)?;
        Ok(Some(r.to_json(&list.cni_version)))
    }

    /// CHECK (configs of 0.4.0 and later): the plugins in order with the cached result;
    /// nothing with `disableCheck`.
    pub fn check_network_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        if !goutil::version_at_least(&list.cni_version, "0.4.0")? {
            return Err(Error::incompatible_version(format!(
                "configuration version \"{}\" does not support the CHECK command",
                list.cni_version
            )));
        }
        if list.disable_check {
            return Ok(());
        }
        let cached = self.cached_result(list, rt)?;
        for p in &list.plugins {
            self.run(list, p, "CHECK", cached.as_ref(), rt)
                .map_err(|e| plugin_failed(p, "check", e))?;
        }
        Ok(())
    }

    /// DEL: the plugins in reverse with the cached result (configs of 0.4.0 and later), then
    /// the cache entry is removed. Without a cache entry the plugins still run.
    pub fn del_network_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        let cached = if goutil::version_at_least(&list.cni_version, "0.4.0")? {
            self.cached_result(list, rt)?
        } else {
            None
        };
        for p in list.plugins.iter().rev() {
            self.run(list, p, "DEL", cached.as_ref(), rt)
                .map_err(|e| plugin_failed(p, "delete", e))?;
        }
        let _ = self.cache.remove(&list.name, &rt.container_id, &rt.ifname);
        Ok(())
    }

    /// The runtime config of a cached attachment, as libcni 1.2's GC rebuilds it.
    pub fn runtime_of(att: &Attachment) -> RuntimeConf {
        RuntimeConf {
            container_id: att.info.container_id.clone(),
            netns: att.info.netns.clone(),
            ifname: att.info.ifname.clone(),
            args: att
                .info
                .cni_args
                .iter()
                .flatten()
                .map(|[k, v]| (k.clone(), v.clone()))
                .collect(),
            capability_args: att.info.capability_args.clone(),
            owner: att.info.owner.clone(),
        }
    }

    /// GC (spec 1.1.0, libcni 1.2's `GCNetworkList`): first a DEL of every cached attachment
    /// of the network that is not in `valid`, then (configs of 1.1.0 and later) a GC of every
    /// plugin with `cni.dev/valid-attachments`. Nothing with `disableGC`. Every failure is
    /// collected; the first one's code is kept.
    pub fn gc_network_list(&self, list: &NetworkConfigList, valid: &[cni::types::Attachment]) -> Result<()> {
        if list.disable_gc {
            return Ok(());
        }
        let mut errs = Errors::new();
        for att in self.cache.attachments(Some(&list.name))? {
            let key = cni::types::Attachment {
                container_id: att.info.container_id.clone(),
                ifname: att.info.ifname.clone(),
            };
            if valid.contains(&key) {
                continue;
            }
            let rt = Self::runtime_of(&att);
            errs.note(self.del_network_list(list, &rt).map_err(|e| {
                e.context(format!(
                    "failed to delete stale attachment {} {}",
                    rt.container_id, rt.ifname
                ))
            }));
        }
        if goutil::version_at_least(&list.cni_version, "1.1.0")? {
            let valid = serde_json::to_value(valid).expect("attachments serialize");
            for p in &list.plugins {
                let mut p2 = p.clone();
                p2.conf.insert("cni.dev/valid-attachments".into(), valid.clone());
                // The key of the spec's drafts, which libcni sends too.
                p2.conf.insert("cni.dev/attachments".into(), valid.clone());
                let rt = RuntimeConf::default();
                errs.note(
                    self.run(list, &p2, "GC", None, &rt)
                        .map_err(|e| plugin_failed(p, "gc", e)),
                );
            }
        }
        errs.into_result()
    }

    /// The stale-only GC: a DEL of each cached attachment of the network whose namespace is
    /// gone, or whose `cnitool exec` ended without its teardown ([`is_stale`]); no plugin GC
    /// (a plugin's GC releases whatever it is not told to keep, also what runtimes that do not
    /// share this cache made). Returns the attachments deleted.
    pub fn gc_stale(&self, list: &NetworkConfigList) -> Result<Vec<Attachment>> {
        if list.disable_gc {
            return Ok(Vec::new());
        }
        let mut errs = Errors::new();
        let mut done = Vec::new();
        for att in self.cache.attachments(Some(&list.name))? {
            if !is_stale(&att) {
                continue;
            }
            let rt = stale_runtime(&att);
            if errs
                .note(self.del_network_list(list, &rt).map_err(|e| {
                    e.context(format!(
                        "failed to delete stale attachment {} {}",
                        rt.container_id, rt.ifname
                    ))
                }))
                .is_some()
            {
                done.push(att);
            }
        }
        errs.into_result().map(|_| done)
    }

    /// STATUS (configs of 1.1.0 and later; earlier ones have nothing to ask): every plugin in
    /// order; the first failure is the answer.
    pub fn status_network_list(&self, list: &NetworkConfigList) -> Result<()> {
        if !goutil::version_at_least(&list.cni_version, "1.1.0")? {
            return Ok(());
        }
        for p in &list.plugins {
            self.run(list, p, "STATUS", None, &RuntimeConf::default())
                .map_err(|e| plugin_failed(p, "status", e))?;
        }
        Ok(())
    }
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`), `None` when it is gone.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a cached attachment is stale: its `cnitool exec` owner is gone, or its recorded
/// namespace is no longer a network namespace. An entry without a namespace (made by
/// libcni 1.1) is never stale.
pub fn is_stale(att: &Attachment) -> bool {
    if let Some(o) = &att.info.owner {
        // A living exec tears its attachments down itself (its namespace may be visible
        // only in its own mount namespace).
        return process_start_time(o.pid) != Some(o.start_time);
    }
    !att.info.netns.is_empty() && !is_netns(&att.info.netns)
}

/// Whether `path` is (still) a network namespace.
pub fn is_netns(path: &str) -> bool {
    !matches!(cni::netns::Netns::open(path), Err(e) if e.is(cni::error::code::UNKNOWN_CONTAINER) || e.is(cni::error::code::INVALID_ENV))
}

/// The runtime config of a stale attachment's DEL: as cached, without the namespace when it
/// is gone (an empty `CNI_NETNS`: the plugins release what is outside of it).
pub fn stale_runtime(att: &Attachment) -> RuntimeConf {
    let mut rt = CniConfig::runtime_of(att);
    if !rt.netns.is_empty() && !is_netns(&rt.netns) {
        rt.netns.clear();
    }
    rt
}
