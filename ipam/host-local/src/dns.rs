//! `ipam.resolvConf`: a resolv.conf file read into the result's `dns`, as the reference's
//! `parseResolvConf`.

use std::path::Path;

use cni::{Dns, Error, Result};

/// Parses resolv.conf text: `nameserver`, `domain`, `search` and `options` lines; comments
/// (`#`, `;`) and other lines are skipped.
pub fn parse(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| s.to_string());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_string()),
            "domain" => dns.domain = fields[1].to_string(),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

/// Reads and parses the resolv.conf file at `path`.
pub fn parse_file(path: &Path) -> Result<Dns> {
    let text = std::fs::read(path).map_err(|e| Error::io(format!("ipam.resolvConf {}", path.display()), e))?;
    Ok(parse(&String::from_utf8_lossy(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key() {
        let d = parse(
            "# comment\n; other\nnameserver 10.0.0.1\nnameserver  10.0.0.2 \ndomain example.com\nsearch a.com b.com\noptions ndots:2 edns0\nbogus\n",
        );
        assert_eq!(d.nameservers, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(d.domain, "example.com");
        assert_eq!(d.search, ["a.com", "b.com"]);
        assert_eq!(d.options, ["ndots:2", "edns0"]);
    }
}
