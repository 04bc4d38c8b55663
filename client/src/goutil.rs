//! Small pieces of Go's standard library and of libcni that the cache and the container id must
//! match byte for byte: `filepath.Abs`/`Clean`, libcni's version comparison, the upstream
//! cnitool's container id.

use sha2::{Digest, Sha512};

/// Go's `filepath.Clean`: the shortest path equal to `p` by lexical processing (repeated `/`
/// squeezed, `.` dropped, `..` eaten with the element before it, no trailing `/`).
pub fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if matches!(out.last(), Some(&l) if l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Go's `filepath.Abs`: `p` joined to the working directory when relative, then [`clean`]ed.
pub fn abs(p: &str) -> std::io::Result<String> {
    if p.starts_with('/') {
        return Ok(clean(p));
    }
    let cwd = std::env::current_dir()?;
    Ok(clean(&format!("{}/{p}", cwd.to_string_lossy())))
}

/// The upstream cnitool's container id of the network namespace at `abs_netns` (an absolute,
/// clean path): `cnitool-` and the hex of the first 10 bytes of its SHA-512.
pub fn cnitool_container_id(abs_netns: &str) -> String {
    let sum = Sha512::digest(abs_netns.as_bytes());
    let mut s = String::with_capacity(28);
    s.push_str("cnitool-");
    for b in &sum[..10] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// libcni's `version.ParseVersion`: `""` is 0.1.0; one to three numeric parts.
pub fn parse_version(v: &str) -> Option<(i64, i64, i64)> {
    if v.is_empty() {
        return Some((0, 1, 0));
    }
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() > 3 {
        return None;
    }
    let mut n = [0i64; 3];
    for (i, p) in parts.iter().enumerate() {
        n[i] = p.parse().ok()?;
    }
    Some((n[0], n[1], n[2]))
}

/// libcni's `version.GreaterThanOrEqualTo(v, other)`; an unparsable `v` is an error naming it.
pub fn version_at_least(v: &str, other: &str) -> cni::Result<bool> {
    let a = parse_version(v)
        .ok_or_else(|| cni::Error::incompatible_version(format!("invalid cniVersion \"{}\"", v.escape_debug())))?;
    let b = parse_version(other).expect("valid version literal");
    Ok(a >= b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_is_gos() {
        for (i, o) in [
            ("", "."),
            ("/", "/"),
            ("//a//b/", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/../a", "/a"),
            ("a/../..", ".."),
            ("../a/..", ".."),
            ("./", "."),
            ("/run/netns/x", "/run/netns/x"),
        ] {
            assert_eq!(clean(i), o, "clean({i:?})");
        }
    }

    #[test]
    fn container_id_is_upstreams() {
        // Computed with Go: fmt.Sprintf("cnitool-%x", sha512.Sum512([]byte(p))[:10]).
        assert_eq!(cnitool_container_id("/run/netns/test"), "cnitool-8ae22670664f2caaa6b3");
    }

    #[test]
    fn versions() {
        assert!(version_at_least("1.0.0", "0.4.0").unwrap());
        assert!(!version_at_least("", "0.4.0").unwrap());
        assert!(version_at_least("1", "0.4.0").unwrap());
        assert!(version_at_least("x.y", "0.4.0").is_err());
    }
}
