//! `cnitool`: drive CNI plugins by hand and from scripts. The upstream tool's interface
//! (`add|check|del|gc|status NETWORK NETNS`, its environment and container ids) on the
//! `cni-client` library (libcni's behaviour and cache), plus `exec` (a command in a network
//! namespace of its own, torn down whatever happens), `list` (the cached attachments) and
//! `lint` (a config checked without touching the node).
//!
//! stdout carries only what a command prints for scripts (the result JSON, the list, the
//! lint report); every failure is one line on stderr, `cnitool: ...`, and a non-zero status.

mod exec;
mod lint;
mod list;
mod nsfile;

use std::path::PathBuf;

use serde_json::{Map, Value};

use cni::Error;
use cni_client::conf::{self, NetworkConfigList};
use cni_client::{goutil, CniConfig, RuntimeConf};

pub const USAGE: &str = "\
cnitool: add, check, remove, gc or status network interfaces from a network namespace,
run a command in a namespace of its own, list attachments, lint configs

usage:
  cnitool [OPTIONS] add    NETWORK NETNS      attach NETNS to NETWORK; prints the result JSON
  cnitool [OPTIONS] check  NETWORK NETNS      CHECK the attachment against its cached result
  cnitool [OPTIONS] del    NETWORK NETNS      detach (also when nothing was attached)
  cnitool [OPTIONS] gc     NETWORK [NETNS]    DEL every cached attachment of NETWORK, then the
                                              plugins' GC (NETNS is ignored, as upstream)
  cnitool [OPTIONS] gc --stale NETWORK        DEL only the attachments whose namespace is gone
                                              or whose `cnitool exec` was killed
  cnitool [OPTIONS] status NETWORK [NETNS]    the plugins' STATUS (NETNS is ignored)
  cnitool [OPTIONS] exec NETWORK [NET-OPTIONS] [NETWORK [NET-OPTIONS]]... [--keep | --netns PATH]
                         -- COMMAND [ARG]...  COMMAND in a new namespace attached to NETWORKs
  cnitool [OPTIONS] list [NETWORK] [--json]   the attachments in the cache
  cnitool lint CONFIG-FILE|NETWORK...         check configs without touching the node

options:
  -i, --ifname NAME     the container interface (add/check/del; default $CNI_IFNAME or eth0)
  --cache-dir DIR       libcni's cache directory (default $CNI_CACHE_DIR or /var/lib/cni)
  -h, --help            this help; `cnitool COMMAND --help` for one command's

environment (as upstream's cnitool):
  NETCONFPATH   where networks are found by name (default /etc/cni/net.d)
  CNI_PATH      the plugin directories, ':'-separated
  CNI_ARGS      K=V;K=V passed to every plugin
  CAP_ARGS      a JSON object of capability args (runtimeConfig), e.g. {\"portMappings\": [...]}
  CNI_IFNAME    the interface name (default eth0)
  CNI_CACHE_DIR the cache directory (ours; --cache-dir wins)
";

const HELP_ADD: &str = "\
usage: cnitool add|check|del NETWORK NETNS [-i NAME]

Runs the network's plugins as libcni does: ADD in order (each plugin gets the previous result),
CHECK in order and DEL in reverse with the result cached at ADD. The container id is upstream's,
`cnitool-` + the hex of the first 10 bytes of the SHA-512 of the absolute NETNS path, so an
attachment made by the upstream cnitool (or another libcni runtime with that id) is found.
The result is cached in <cache-dir>/results/NETWORK-ID-IFNAME (libcni's cniCacheV1).
";

const HELP_GC: &str = "\
usage: cnitool gc NETWORK [NETNS]
       cnitool gc --stale NETWORK [NETNS]

Without --stale (upstream's gc): DELs every cached attachment of NETWORK, then (cniVersion 1.1.0
and later) runs each plugin's GC with an empty cni.dev/valid-attachments: everything of the
network is collected. With --stale: DELs only the cached attachments whose network namespace
no longer exists, or whose `cnitool exec` was killed before its teardown (and removes the
namespace that exec created); no plugin GC. NETNS is ignored. `disableGC` is honoured.
";

const HELP_STATUS: &str = "\
usage: cnitool status NETWORK [NETNS]

Runs every plugin's STATUS (cniVersion 1.1.0 and later; earlier versions have none: ok).
Exit status 0 when the network can take ADDs; otherwise the plugin's error (e.g. code 50).
";

/// A failure of a command: one line on stderr, exit status 1.
pub struct Fail(pub String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail(e.to_string())
    }
}

pub type Res<T> = Result<T, Fail>;

pub fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(Fail(msg.into()))
}

/// What every command reads from the environment and the global options.
pub struct Ctx {
    pub netconfpath: PathBuf,
    pub cni_path: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

impl Ctx {
    fn from_env(cache_dir: Option<String>) -> Ctx {
        let netconfpath = std::env::var("NETCONFPATH")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/etc/cni/net.d".into());
        let cni_path = std::env::var("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
        let cache_dir = cache_dir
            .or_else(|| std::env::var("CNI_CACHE_DIR").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| cni_client::cache::DEFAULT_CACHE_DIR.into());
        Ctx {
            netconfpath: netconfpath.into(),
            cni_path,
            cache_dir: cache_dir.into(),
        }
    }

    /// The client, with the plugins' echo of their error left out of their stderr: a failure
    /// is one line, cnitool's.
    pub fn client(&self) -> CniConfig {
        let mut c = CniConfig::new(self.cni_path.clone(), self.cache_dir.clone());
        c.drop_error_echo = true;
        c
    }

    pub fn load(&self, network: &str) -> Res<NetworkConfigList> {
        conf::load_conf_list(&self.netconfpath, network).map_err(|e| Fail(format!("network \"{network}\": {e}")))
    }
}

/// `CNI_ARGS` as the upstream cnitool parses it: `K=V` pairs separated by `;`; a pair without
/// exactly one `=`, with an empty key or an empty value is an error.
pub fn parse_cni_args(s: &str) -> Res<Vec<(String, String)>> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(';')
        .map(|pair| match pair.split('=').collect::<Vec<_>>()[..] {
            [k, v] if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => fail(format!(
                "invalid CNI_ARGS pair \"{}\": expected KEY=VALUE",
                pair.escape_debug()
            )),
        })
        .collect()
}

/// `CAP_ARGS`: a JSON object (or `null`).
pub fn parse_cap_args(s: &str) -> Res<Option<Map<String, Value>>> {
    if s.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(Value::Null) => Ok(None),
        Ok(other) => fail(format!("CAP_ARGS must be a JSON object, not {}", kind(&other))),
        Err(e) => fail(format!("CAP_ARGS is not valid JSON: {e}")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Prints a result as Go's `types.PrintResult` does (indented by four spaces).
pub fn print_json(v: &Value) {
    use serde::Serialize;
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    v.serialize(&mut ser).expect("a JSON value serializes");
    buf.push(b'\n');
    use std::io::Write;
    let _ = std::io::stdout().write_all(&buf);
}

/// The arguments of one command after the global options.
struct Parsed {
    positional: Vec<String>,
    ifname: Option<String>,
    stale: bool,
    json: bool,
}

fn parse_simple(cmd: &str, args: &[String], help: &str) -> Res<Parsed> {
    let mut p = Parsed {
        positional: Vec::new(),
        ifname: None,
        stale: false,
        json: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{help}");
                std::process::exit(0);
            }
            "-i" | "--ifname" if matches!(cmd, "add" | "check" | "del") => match it.next() {
                Some(v) => p.ifname = Some(v.clone()),
                None => return fail(format!("{cmd}: {a} needs an interface name")),
            },
            "--stale" if cmd == "gc" => p.stale = true,
            "--json" if cmd == "list" => p.json = true,
            s if s.starts_with("--ifname=") && matches!(cmd, "add" | "check" | "del") => {
                p.ifname = Some(s["--ifname=".len()..].to_string())
            }
            s if s.starts_with('-') && s.len() > 1 => {
                return fail(format!("{cmd}: unknown option {s} (see cnitool {cmd} --help)"))
            }
            _ => p.positional.push(a.clone()),
        }
    }
    Ok(p)
}

/// add / check / del.
fn attach_cmd(ctx: &Ctx, cmd: &str, args: &[String]) -> Res<i32> {
    let p = parse_simple(cmd, args, HELP_ADD)?;
    let [network, netns] = &p.positional[..] else {
        return fail(format!("{cmd}: expected NETWORK NETNS (see cnitool {cmd} --help)"));
    };
    let cni_args = parse_cni_args(&std::env::var("CNI_ARGS").unwrap_or_default())?;
    let caps = parse_cap_args(&std::env::var("CAP_ARGS").unwrap_or_default())?;
    let ifname = match p.ifname {
        Some(i) => i,
        None => std::env::var("CNI_IFNAME").unwrap_or_else(|_| "eth0".into()),
    };
    let netns = goutil::abs(netns).map_err(|e| Fail(format!("NETNS {netns}: {e}")))?;
    if cmd != "del" {
        // Before any plugin runs: a path that is not a network namespace changes nothing.
        cni::netns::Netns::open(&netns).map_err(|e| Fail(e.to_string().replace("CNI_NETNS", "NETNS")))?;
    }
    let list = ctx.load(network)?;
    let rt = RuntimeConf {
        container_id: goutil::cnitool_container_id(&netns),
        netns,
        ifname,
        args: cni_args,
        capability_args: caps,
        owner: None,
    };
    let mut rt = rt;
    let cni = ctx.client();
    if cmd != "add" {
        // Ours (upstream's cnitool passes only what the environment holds): a CHECK or DEL
        // without CAP_ARGS or CNI_ARGS gets the ones cached at ADD, as runtimes do with
        // libcni's cached config, so that e.g. portmap's DEL finds its port mappings.
        if let Ok(Some(info)) = cni.cache.read(&list.name, &rt.container_id, &rt.ifname) {
            if std::env::var_os("CAP_ARGS").is_none() {
                rt.capability_args = info.capability_args;
            }
            if std::env::var_os("CNI_ARGS").is_none() {
                rt.args = info.cni_args.into_iter().flatten().map(|[k, v]| (k, v)).collect();
            }
        }
    }
    let prefix = |e: Error| Fail(format!("{cmd} {network}: {e}"));
    match cmd {
        "add" => {
            let r = cni.add_network_list(&list, &rt).map_err(prefix)?;
            print_json(&r);
        }
        "check" => cni.check_network_list(&list, &rt).map_err(prefix)?,
        _ => cni.del_network_list(&list, &rt).map_err(prefix)?,
    }
    Ok(0)
}

fn gc_cmd(ctx: &Ctx, args: &[String]) -> Res<i32> {
    let p = parse_simple("gc", args, HELP_GC)?;
    let network = match &p.positional[..] {
        [n] | [n, _] => n,
        _ => return fail("gc: expected NETWORK [NETNS] (see cnitool gc --help)"),
    };
    let list = ctx.load(network)?;
    let cni = ctx.client();
    if p.stale {
        let done = cni.gc_stale(&list).map_err(|e| Fail(format!("gc {network}: {e}")))?;
        for att in &done {
            if att.info.owner.as_ref().is_some_and(|o| o.owns_netns) {
                nsfile::remove(&att.info.netns);
            }
            eprintln!(
                "cnitool: gc {network}: deleted stale attachment {} {} ({})",
                att.info.container_id,
                att.info.ifname,
                if att.info.netns.is_empty() {
                    "-"
                } else {
                    &att.info.netns
                }
            );
        }
    } else {
        cni.gc_network_list(&list, &[])
            .map_err(|e| Fail(format!("gc {network}: {e}")))?;
    }
    Ok(0)
}

fn status_cmd(ctx: &Ctx, args: &[String]) -> Res<i32> {
    let p = parse_simple("status", args, HELP_STATUS)?;
    let network = match &p.positional[..] {
        [n] | [n, _] => n,
        _ => return fail("status: expected NETWORK [NETNS] (see cnitool status --help)"),
    };
    let list = ctx.load(network)?;
    ctx.client()
        .status_network_list(&list)
        .map_err(|e| Fail(format!("status {network}: {e}")))?;
    Ok(0)
}

fn run(argv: Vec<String>) -> Res<i32> {
    let mut cache_dir = None;
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "-h" | "--help" | "help" => {
                print!("{USAGE}");
                return Ok(0);
            }
            "--cache-dir" => {
                cache_dir = Some(
                    argv.get(i + 1)
                        .cloned()
                        .ok_or_else(|| Fail("--cache-dir needs a directory".into()))?,
                );
                i += 2;
            }
            s if s.starts_with("--cache-dir=") => {
                cache_dir = Some(s["--cache-dir=".len()..].to_string());
                i += 1;
            }
            _ => break,
        }
    }
    let Some(cmd) = argv.get(i) else {
        eprint!("{USAGE}");
        return Ok(1);
    };
    let rest = &argv[i + 1..];
    let ctx = Ctx::from_env(cache_dir);
    match cmd.as_str() {
        "add" | "check" | "del" => attach_cmd(&ctx, cmd, rest),
        "gc" => gc_cmd(&ctx, rest),
        "status" => status_cmd(&ctx, rest),
        "exec" => exec::main(&ctx, rest),
        "list" => list::main(&ctx, rest),
        "lint" => lint::main(&ctx, rest),
        other => fail(format!(
            "unknown command \"{}\" (see cnitool --help)",
            other.escape_debug()
        )),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(argv) {
        Ok(c) => c,
        Err(Fail(msg)) => {
            eprintln!("cnitool: {msg}");
            1
        }
    };
    std::process::exit(code);
}
