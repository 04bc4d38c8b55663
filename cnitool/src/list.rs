//! `cnitool list [NETWORK] [--json]`: the attachments in the cache (ours, the upstream
//! cnitool's, any libcni runtime's that shares the cache directory).

use serde_json::{json, Value};

use crate::{fail, parse_simple, Ctx, Res};

const HELP: &str = "\
usage: cnitool list [NETWORK] [--json]

The attachments in the cache (<cache-dir>/results): network, container id, interface, network
namespace, addresses, age and state (`ok`; `exec PID` while a `cnitool exec` owns it; `stale`
when its namespace is gone or its exec was killed: `cnitool gc --stale NETWORK` removes those).
--json prints a JSON array with the same fields (age in seconds).
";

fn age(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

pub fn main(ctx: &Ctx, args: &[String]) -> Res<i32> {
    let p = parse_simple("list", args, HELP)?;
    let network = match &p.positional[..] {
        [] => None,
        [n] => Some(n.as_str()),
        _ => return fail("list: expected at most one NETWORK (see cnitool list --help)"),
    };
    let cache = cni_client::Cache::new(&ctx.cache_dir);
    let atts = cache.attachments(network)?;
    let now = std::time::SystemTime::now();
    let rows: Vec<Value> = atts
        .iter()
        .map(|a| {
            let ips: Vec<Value> = a
                .info
                .result
                .as_ref()
                .and_then(|r| r.get("ips"))
                .and_then(Value::as_array)
                .map(|ips| ips.iter().filter_map(|ip| ip.get("address").cloned()).collect())
                .unwrap_or_default();
            let age = a
                .modified
                .and_then(|m| now.duration_since(m).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let state = if cni_client::is_stale(a) {
                "stale".to_string()
            } else if let Some(o) = &a.info.owner {
                format!("exec {}", o.pid)
            } else {
                "ok".to_string()
            };
            json!({
                "network": a.info.network_name,
                "containerId": a.info.container_id,
                "ifname": a.info.ifname,
                "netns": a.info.netns,
                "ips": ips,
                "age": age,
                "state": state,
            })
        })
        .collect();
    if p.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON serializes"));
        return Ok(0);
    }
    let mut table = vec![["NETWORK", "CONTAINER", "IFNAME", "NETNS", "ADDRESSES", "AGE", "STATE"].map(String::from)];
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let ips: Vec<&str> = r["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let netns = s("netns");
        table.push([
            s("network"),
            s("containerId"),
            s("ifname"),
            if netns.is_empty() { "-".into() } else { netns },
            if ips.is_empty() { "-".into() } else { ips.join(",") },
            age(r["age"].as_u64().unwrap_or(0)),
            s("state"),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &table {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(0)
}
