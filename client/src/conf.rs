//! Network configurations as libcni finds and reads them (`libcni/conf.go`): a list by its name
//! in a directory (`.conflist` files first, then the single-plugin `.conf`/`.json` files wrapped
//! as a one-plugin list, each set in byte order of the file names, the first match winning),
//! and the config each plugin of the list is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use cni::{Error, Result};

/// One plugin of a list: its config as libcni re-encodes it (Go's `json.Marshal` of the
/// decoded object: keys sorted), and the keys libcni itself reads.
#[derive(Debug, Clone)]
pub struct PluginConf {
    /// The plugin's config object (keys sorted, as Go marshals a map).
    pub conf: Map<String, Value>,
    /// `type`: the plugin's file name in `CNI_PATH`.
    pub plugin_type: String,
    /// `name`, when the plugin config has its own (for messages).
    pub name: String,
    /// `capabilities`: the capability args (`CAP_ARGS` keys) the plugin takes in
    /// `runtimeConfig`.
    pub capabilities: BTreeMap<String, bool>,
}

/// A network: a list of plugins run in order (ADD) and in reverse (DEL).
#[derive(Debug, Clone)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    /// `disableGC` (spec 1.1.0): GC runs no plugin and deletes no cached attachment.
    pub disable_gc: bool,
    pub plugins: Vec<PluginConf>,
    /// The list as read (or, for a single-plugin config, as wrapped): what the cache keeps.
    pub bytes: Vec<u8>,
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
}

/// The keys of a plugin config that libcni decodes (Go's `types.NetConf`: matched as Go
/// matches struct fields, case-insensitively).
#[derive(Deserialize)]
struct RawNetConf {
    #[serde(rename = "type", default)]
    plugin_type: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    capabilities: Option<BTreeMap<String, bool>>,
}

fn parse_error(what: &str, file: Option<&Path>, msg: impl std::fmt::Display) -> Error {
    match file {
        Some(f) => Error::invalid_config(format!("{}: {what}: {msg}", f.display())),
        None => Error::invalid_config(format!("{what}: {msg}")),
    }
}

/// Decodes one plugin config (libcni's `ConfFromBytes`).
fn plugin_from_value(v: Value, file: Option<&Path>, what: &str) -> Result<PluginConf> {
    let mut v = v;
    let bytes = serde_json::to_vec(&v).map_err(|e| parse_error(what, file, e))?;
    let raw: RawNetConf = cni::types::decode(&bytes).map_err(|e| parse_error(what, file, e.message()))?;
    if raw.plugin_type.is_empty() {
        return Err(parse_error(what, file, "missing 'type'"));
    }
    v.sort_all_objects();
    let Value::Object(conf) = v else {
        return Err(parse_error(what, file, "not a JSON object"));
    };
    Ok(PluginConf {
        conf,
        plugin_type: raw.plugin_type,
        name: raw.name,
        capabilities: raw.capabilities.unwrap_or_default(),
    })
}

/// A JSON syntax error as `line L column C: what`.
pub fn syntax(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = msg.strip_suffix(&suffix).unwrap_or(&msg);
    format!("line {} column {}: invalid JSON: {msg}", e.line(), e.column())
}

impl NetworkConfigList {
    /// libcni's `ConfListFromBytes`.
    pub fn from_bytes(bytes: &[u8], file: Option<&Path>) -> Result<NetworkConfigList> {
        let what = "error parsing configuration list";
        let v: Value = serde_json::from_slice(bytes).map_err(|e| parse_error(what, file, syntax(&e)))?;
        let Value::Object(raw) = v else {
            return Err(parse_error(what, file, "not a JSON object"));
        };
        let name = match raw.get("name") {
            None => return Err(parse_error(what, file, "no name")),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(parse_error(what, file, format!("invalid name type {}", go_type(other)))),
        };
        let cni_version = match raw.get("cniVersion") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(parse_error(
                    what,
                    file,
                    format!("invalid cniVersion type {}", go_type(other)),
                ))
            }
        };
        let flag = |key: &str| -> Result<bool> {
            match raw.get(key) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(parse_error(
                    what,
                    file,
                    format!("invalid {key} type {}", go_type(other)),
                )),
            }
        };
        let disable_check = flag("disableCheck")?;
        let disable_gc = flag("disableGC")?;
        let plugins = match raw.get("plugins") {
            None => return Err(parse_error(what, file, "no 'plugins' key")),
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(parse_error(
                    what,
                    file,
                    format!("invalid 'plugins' type {}", go_type(other)),
                ))
            }
        };
        if plugins.is_empty() {
            return Err(parse_error(what, file, "no plugins in list"));
        }
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| plugin_from_value(p.clone(), file, &format!("failed to parse plugin config {i}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            disable_gc,
            plugins,
            bytes: bytes.to_vec(),
            file: file.map(Path::to_path_buf),
        })
    }

    /// libcni's `ConfListFromFile`.
    pub fn from_file(path: &Path) -> Result<NetworkConfigList> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        NetworkConfigList::from_bytes(&bytes, Some(path))
    }

    /// A single-plugin config (`.conf`/`.json`) wrapped as a one-plugin list, as libcni's
    /// `ConfListFromConf` does it (the list's bytes are the wrapped list).
    pub fn from_single_bytes(bytes: &[u8], file: Option<&Path>) -> Result<NetworkConfigList> {
        let what = "error parsing configuration";
        let v: Value = serde_json::from_slice(bytes).map_err(|e| parse_error(what, file, syntax(&e)))?;
        let raw: RawNetConf = cni::types::decode(bytes).map_err(|e| parse_error(what, file, e.message()))?;
        let plugin = plugin_from_value(v, file, what)?;
        let mut wrapped = serde_json::json!({
            "cniVersion": raw.cni_version,
            "name": raw.name,
            "plugins": [Value::Object(plugin.conf.clone())],
        });
        wrapped.sort_all_objects();
        let bytes = serde_json::to_vec(&wrapped).expect("a JSON value serializes");
        let mut list = NetworkConfigList::from_bytes(&bytes, file)?;
        list.file = file.map(Path::to_path_buf);
        Ok(list)
    }

    /// A list or a single-plugin config read from `path`, told apart by the file name as
    /// libcni tells them apart (`.conflist` is a list).
    pub fn from_any_file(path: &Path) -> Result<NetworkConfigList> {
        if path.extension().is_some_and(|e| e == "conflist") {
            return NetworkConfigList::from_file(path);
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        NetworkConfigList::from_single_bytes(&bytes, Some(path))
    }
}

/// Go's name of a JSON value's type after decoding into `interface{}`, for messages as
/// libcni's (`%T`).
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// libcni's `ConfFiles`: the files (not directories) of `dir` whose extension is one of
/// `exts`, sorted by path. A directory that does not exist has none.
pub fn conf_files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::io(
                format!("NETCONFPATH {}: cannot list the directory", dir.display()),
                e,
            ))
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(format!("NETCONFPATH {}: listing", dir.display()), e))?;
        // As Go's ReadDir: the entry itself (a symlink to a directory is not a directory).
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(i) = name.rfind('.') {
            if exts.contains(&&name[i..]) {
                out.push(dir.join(&*name));
            }
        }
    }
    out.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
    Ok(out)
}

/// The network `name` in `dir`, found as libcni's `LoadConfList` finds it. As there, a file
/// that cannot be read or parsed before the match fails the lookup (naming the file).
pub fn load_conf_list(dir: &Path, name: &str) -> Result<NetworkConfigList> {
    let lists = conf_files(dir, &[".conflist"])?;
    for f in &lists {
        let l = NetworkConfigList::from_file(f)?;
        if l.name == name {
            return Ok(l);
        }
    }
    let singles = conf_files(dir, &[".conf", ".json"])?;
    if singles.is_empty() && lists.is_empty() {
        return Err(Error::invalid_config(format!(
            "no net configurations found in {} (NETCONFPATH)",
            dir.display()
        )));
    }
    for f in &singles {
        let bytes = std::fs::read(f).map_err(|e| Error::io(format!("reading {}", f.display()), e))?;
        let raw: RawNetConf =
            cni::types::decode(&bytes).map_err(|e| parse_error("error parsing configuration", Some(f), e.message()))?;
        if raw.plugin_type.is_empty() {
            return Err(parse_error("error parsing configuration", Some(f), "missing 'type'"));
        }
        if raw.name == name {
            return NetworkConfigList::from_single_bytes(&bytes, Some(f));
        }
    }
    Err(Error::invalid_config(format!(
        "no net configuration with name \"{name}\" in {} (NETCONFPATH)",
        dir.display()
    )))
}

/// Every network in `dir`, in lookup order (the first of a name is the one found by name).
pub fn all_conf_lists(dir: &Path) -> Result<Vec<Result<NetworkConfigList>>> {
    let mut out: Vec<Result<NetworkConfigList>> = conf_files(dir, &[".conflist"])?
        .iter()
        .map(|f| NetworkConfigList::from_file(f))
        .collect();
    out.extend(
        conf_files(dir, &[".conf", ".json"])?
            .iter()
            .map(|f| NetworkConfigList::from_any_file(f)),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "cni-client-conf-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        for (n, c) in files {
            std::fs::write(d.join(n), c).unwrap();
        }
        d
    }

    #[test]
    fn conflists_first_then_single_configs_first_match_wins() {
        let d = dir_with(&[
            ("10-a.conf", r#"{"cniVersion":"1.0.0","name":"n","type":"single"}"#),
            (
                "20-b.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"second"}]}"#,
            ),
            (
                "10-b.conflist",
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"first"}]}"#,
            ),
            ("30-c.json", r#"{"cniVersion":"0.4.0","name":"m","type":"json"}"#),
            ("40-d.txt", r#"{"name":"x","type":"ignored"}"#),
        ]);
        assert_eq!(load_conf_list(&d, "n").unwrap().plugins[0].plugin_type, "first");
        let m = load_conf_list(&d, "m").unwrap();
        assert_eq!(
            (m.cni_version.as_str(), m.plugins[0].plugin_type.as_str()),
            ("0.4.0", "json")
        );
        let wrapped: Value = serde_json::from_slice(&m.bytes).unwrap();
        assert_eq!(wrapped["plugins"][0]["type"], "json");
        let e = load_conf_list(&d, "x").unwrap_err();
        assert!(e.message().contains("no net configuration with name \"x\""), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn list_errors_as_libcni() {
        for (body, want) in [
            (r#"{"plugins":[{"type":"a"}]}"#, "no name"),
            (r#"{"name":1,"plugins":[{"type":"a"}]}"#, "invalid name type float64"),
            (r#"{"name":"n"}"#, "no 'plugins' key"),
            (r#"{"name":"n","plugins":[]}"#, "no plugins in list"),
            (
                r#"{"name":"n","plugins":[{"x":1}]}"#,
                "failed to parse plugin config 0: missing 'type'",
            ),
            (
                r#"{"name":"n","disableCheck":"yes","plugins":[{"type":"a"}]}"#,
                "invalid disableCheck type string",
            ),
            ("{\n  \"name\": \"n\",\n  x", "line 3 column 3"),
        ] {
            let e = NetworkConfigList::from_bytes(body.as_bytes(), None).unwrap_err();
            assert!(e.message().contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn plugin_keys_are_sorted_and_capabilities_read() {
        let l = NetworkConfigList::from_bytes(
            br#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"portmap","snat":true,"Capabilities":{"portMappings":true}}]}"#,
            None,
        )
        .unwrap();
        let p = &l.plugins[0];
        assert_eq!(p.capabilities.get("portMappings"), Some(&true));
        assert_eq!(p.conf.keys().collect::<Vec<_>>(), ["Capabilities", "snat", "type"]);
    }
}
