//! Small identifiers: stable hashes of names (FNV-1a) and random per-call tokens.

/// FNV-1a (64 bit) over `parts`, each followed by a NUL: stable across builds and versions,
/// for names derived from an attachment (a temporary interface name, a record's file name).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        let sep: &[u8] = if i + 1 < parts.len() { &[0] } else { &[] };
        for b in p.iter().chain(sep) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `n` random bytes from the kernel (`getrandom(2)`); a failure (which the kernel only gives
/// before its pool is ready at boot, or under a seccomp filter) falls back to the clock and
/// the pid, mixed: a token must differ between calls, not resist an attacker.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // SAFETY: getrandom writes at most N bytes into our buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = format!(
            "{}:{}:{:?}",
            std::process::id(),
            now.as_nanos(),
            std::thread::current().id()
        );
        let mut h = fnv1a(&[seed.as_bytes()]);
        for x in b.iter_mut() {
            h = h.rotate_left(8).wrapping_mul(0x0100_0000_01b3) ^ 0x9e37_79b9_7f4a_7c15;
            *x = (h >> 56) as u8;
        }
    }
    b
}

/// A random token naming one call (16 hex digits), e.g. the ADD whose reservations its undo
/// may release.
pub fn random_token() -> String {
    random_bytes::<8>().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `t` can be a call token given by another process: 1 to 64 letters, digits, `-`
/// or `_`.
pub fn valid_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 64 && t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_standard_one() {
        // FNV-1a 64 of "a" (a published test vector).
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    #[test]
    fn tokens_differ_and_are_valid() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert!(valid_token(&a) && a.len() == 16);
        assert!(!valid_token("") && !valid_token("a b") && !valid_token("x\n"));
    }
}
