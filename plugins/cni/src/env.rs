//! The `CNI_*` environment of a call, read and validated as the spec says.

use std::path::PathBuf;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(Error::invalid_env(format!(
                    "unknown CNI_COMMAND \"{}\": expected ADD, DEL, CHECK, VERSION, GC or STATUS",
                    other.escape_debug()
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// The validated environment of one call.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`; optional for DEL (the namespace may be gone).
    pub netns: Option<String>,
    pub ifname: String,
    /// `CNI_ARGS`, raw.
    pub args: String,
    pub path: Vec<PathBuf>,
    /// The token of this call ([`TOKEN_ENV`] when a plugin that delegates to us gave one, else
    /// a new random one): an IPAM ADD records it with what it reserves, and the DEL that may
    /// undo the ADD names it.
    pub token: String,
    /// [`UNDO_ENV`]: this IPAM DEL undoes the failed ADD of the plugin that runs it, the ADD
    /// whose token this is.
    pub undo_of: Option<String>,
}

/// Set in the environment of the IPAM ADD a plugin delegates: the token of the plugin's call
/// ([`Env::token`]), which the IPAM plugin keeps with what it reserves. Other IPAM plugins
/// ignore it.
pub const TOKEN_ENV: &str = "CNI_RS_ADD_TOKEN";

/// Set in the environment of the IPAM DEL that a plugin runs to undo its own failed ADD, to
/// the token that ADD was given ([`TOKEN_ENV`]): our host-local then releases only what that
/// very ADD reserved (never a lease held before it, or claimed since by another ADD of the
/// attachment), and puts back the round-robin pointers it moved, so that the failed call
/// leaves the store as it found it. Other IPAM plugins ignore it.
pub const UNDO_ENV: &str = "CNI_RS_UNDO_FAILED_ADD";

/// Where a call's variables are looked up: the process's environment ([`process_var`]) or,
/// for a plugin run in-process by another, the one it was given.
pub type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// The flags of this process beside a call's variables, for tests and diagnosis; each is read
/// from the process's environment once ([`process_flags`]).
#[derive(Debug, Clone, Default)]
pub struct ProcessFlags {
    /// [`FAULT_ENV`]: the fault point that panics (see [`crate::fault`]; debug builds only).
    pub fault: Option<String>,
    /// [`TRACE_ENV`] is `1`: step timings on stderr (see [`crate::trace`]).
    pub trace: bool,
    /// [`CI_ENV`] is set and not empty, `false` or `0`: a CI run, where a test that lacks what
    /// it needs fails instead of skipping (this crate's tests and the test bed's, `cni_tests`).
    pub ci: bool,
}

/// Names the fault point of a debug build that panics (see [`crate::fault`]).
pub const FAULT_ENV: &str = "CNI_RS_FAULT";

/// `1`: step timings on stderr (see [`crate::trace`]).
pub const TRACE_ENV: &str = "CNI_RS_TRACE";

/// Set in CI runs (see [`ProcessFlags::ci`]).
pub const CI_ENV: &str = "CI";

/// This process's [`ProcessFlags`], read on first use. (An in-process plugin shares them with
/// the plugin that runs it, as a child inherits them; [`UNDO_ENV`] and [`TOKEN_ENV`] are a
/// call's, read with its other variables by [`Env::from_lookup`].)
pub fn process_flags() -> &'static ProcessFlags {
    static FLAGS: std::sync::OnceLock<ProcessFlags> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| ProcessFlags {
        fault: process_var(FAULT_ENV),
        trace: process_var(TRACE_ENV).is_some_and(|v| v == "1"),
        ci: process_var(CI_ENV).is_some_and(|v| !v.is_empty() && v != "false" && v != "0"),
    })
}

/// The spec's rule for network names and container ids, as [`valid_name`] checks it: the
/// one wording of every message that refuses a name.
pub const NAME_RULE: &str = "must start with a letter or digit and hold only letters, digits, '_', '.' and '-'";

/// The spec's rule for network names and container ids ([`NAME_RULE`]): a letter or digit,
/// then letters, digits, `_`, `.`, `-`.
pub fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A network name (the config's `name`) that follows [`valid_name`]; else code 7.
pub fn check_network_name(name: &str) -> Result<()> {
    check_name(name, "network name", Error::invalid_config)
}

/// A container id (`CNI_CONTAINERID`) that follows [`valid_name`]; else code 4.
pub fn check_container_id(id: &str) -> Result<()> {
    check_name(id, "CNI_CONTAINERID", Error::invalid_env)
}

/// `s` follows [`valid_name`]; else the error `refuse` makes of the one message.
fn check_name(s: &str, what: &str, refuse: fn(String) -> Error) -> Result<()> {
    if valid_name(s) {
        return Ok(());
    }
    Err(refuse(format!("invalid {what} \"{}\": {NAME_RULE}", s.escape_debug())))
}

/// The spec's rule for interface names: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or
/// whitespace. Returns why not.
pub fn check_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > 15 {
        return Err("is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("is \".\" or \"..\"");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// The process's variable `k` (not UTF-8: lossily), the lookup a plugin run as its own
/// process uses.
pub fn process_var(k: &str) -> Option<String> {
    std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())
}

impl Env {
    /// Reads the environment for `command` from the process's variables.
    pub fn from_process(command: Command) -> Result<Env> {
        Env::from_lookup(command, process_var)
    }

    /// Reads the environment for `command` through `get`, requiring what the verb needs.
    pub fn from_lookup(command: Command, get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        use Command::*;
        let needs = |var: &str| -> bool {
            match var {
                "CNI_CONTAINERID" | "CNI_IFNAME" => matches!(command, Add | Del | Check),
                "CNI_NETNS" => matches!(command, Add | Check),
                "CNI_PATH" => matches!(command, Add | Del | Check),
                _ => false,
            }
        };
        let mut missing = Vec::new();
        let mut fetch = |var: &str| -> Option<String> {
            let v = get(var).filter(|v| !v.is_empty());
            if v.is_none() && needs(var) {
                missing.push(var.to_string());
            }
            v
        };
        let container_id = fetch("CNI_CONTAINERID");
        let netns = fetch("CNI_NETNS");
        let ifname = fetch("CNI_IFNAME");
        let path = fetch("CNI_PATH");
        if !missing.is_empty() {
            return Err(Error::invalid_env(format!(
                "required environment variables missing for {}: {}",
                command.as_str(),
                missing.join(", ")
            )));
        }
        let container_id = container_id.unwrap_or_default();
        if !container_id.is_empty() {
            check_container_id(&container_id)?;
        }
        let ifname = ifname.unwrap_or_default();
        if !ifname.is_empty() {
            if let Err(why) = check_ifname(&ifname) {
                return Err(Error::invalid_env(format!(
                    "invalid CNI_IFNAME \"{}\": {why}",
                    ifname.escape_debug()
                )));
            }
        }
        if let Some(ns) = &netns {
            if ns.contains('\0') {
                return Err(Error::invalid_env("invalid CNI_NETNS: contains NUL"));
            }
        }
        let path = path
            .map(|p| p.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
            .unwrap_or_default();
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args: get("CNI_ARGS").unwrap_or_default(),
            path,
            token: get(TOKEN_ENV)
                .filter(|t| crate::ids::valid_token(t))
                .unwrap_or_else(crate::ids::random_token),
            // A value that cannot be a token (the `1` of older versions) names no ADD: such an
            // undo releases nothing it cannot prove its own.
            undo_of: get(UNDO_ENV).map(|t| if crate::ids::valid_token(&t) { t } else { String::new() }),
        })
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, split as the reference's `types.LoadArgs`
/// splits them: every pair (an empty one too, e.g. after a trailing `;`) has exactly one `=`.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(';')
        .map(|pair| match pair.split('=').collect::<Vec<_>>()[..] {
            [k, v] => Ok((k.to_string(), v.to_string())),
            _ => Err(Error::invalid_env(format!(
                "CNI_ARGS: invalid pair \"{}\": expected KEY=VALUE",
                pair.escape_debug()
            ))),
        })
        .collect()
}

/// `CNI_ARGS` read as the reference's `types.LoadArgs` reads them into a plugin's args struct
/// with the fields `known` (matched exactly, as Go's `FieldByName`) and `IgnoreUnknown`: a key
/// the plugin does not know is an error unless `IgnoreUnknown` is `1`/`true` (runtimes send it
/// with their own keys). Returns the known pairs in order (a later one overrides).
pub fn load_args(s: &str, known: &[&str]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for (k, v) in parse_cni_args(s)? {
        if k == "IgnoreUnknown" {
            ignore_unknown = match v.to_ascii_lowercase().as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    return Err(Error::invalid_env(format!(
                        "CNI_ARGS: IgnoreUnknown \"{}\" is not a boolean (1, 0, true or false)",
                        v.escape_debug()
                    )))
                }
            };
        } else if known.contains(&k.as_str()) {
            out.push((k, v));
        } else {
            unknown.push(format!("{k}={v}"));
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(Error::invalid_env(format!(
            "CNI_ARGS: unknown args {unknown:?}: this plugin takes {} (set IgnoreUnknown=1 to ignore others)",
            known
                .iter()
                .chain(["IgnoreUnknown"].iter())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(out)
}

/// The value of `key` in `CNI_ARGS` for a plugin whose only arg is `key` (the last pair wins,
/// as in the reference).
pub fn cni_arg(s: &str, key: &str) -> Result<Option<String>> {
    Ok(load_args(s, &[key])?.pop().map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(cmd: Command, vars: &[(&str, &str)]) -> Result<Env> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::from_lookup(cmd, |k| m.get(k).cloned())
    }

    #[test]
    fn requires_per_verb() {
        let e = env(Command::Add, &[("CNI_CONTAINERID", "abc")]).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(
            e.to_string().contains("CNI_NETNS") && e.to_string().contains("CNI_IFNAME"),
            "{e}"
        );
        let ok = env(
            Command::Del,
            &[
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/x:/y"),
            ],
        )
        .unwrap();
        assert!(ok.netns.is_none());
        assert_eq!(ok.path.len(), 2);
        env(Command::Gc, &[]).unwrap();
        env(Command::Status, &[]).unwrap();
    }

    #[test]
    fn validates_ids_and_names() {
        assert!(valid_name("a-b_c.1"));
        assert!(!valid_name("../x"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("0123456789abcdef").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("..").is_err());
        assert!(check_ifname("a:1").is_err());
    }

    #[test]
    fn cni_args() {
        assert_eq!(
            cni_arg("IgnoreUnknown=1;IP=10.0.0.5", "IP").unwrap().as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(parse_cni_args("A=1;B=").unwrap().len(), 2);
        assert!(parse_cni_args("junk").is_err());
        // As the reference's LoadArgs: an empty pair, a second '=', an unknown key.
        for bad in [
            "MAC=x;",
            ";MAC=x",
            "MAC=a=b",
            "K8S_POD_NAME=x",
            "IgnoreUnknown=yes;X=1",
            "ignoreunknown=1;X=1",
        ] {
            let e = cni_arg(bad, "MAC").unwrap_err();
            assert_eq!(e.code(), 4, "{bad}: {e}");
        }
        let e = cni_arg("K8S_POD_NAME=x", "MAC").unwrap_err().to_string();
        assert!(e.contains("K8S_POD_NAME=x") && e.contains("IgnoreUnknown"), "{e}");
        assert_eq!(cni_arg("", "MAC").unwrap(), None);
        assert_eq!(
            cni_arg("MAC=a;K8S_POD_NAME=x;IgnoreUnknown=true;MAC=b", "MAC")
                .unwrap()
                .as_deref(),
            Some("b")
        );
    }
}
