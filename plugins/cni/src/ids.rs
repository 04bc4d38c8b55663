//! Small identifiers: stable hashes of names (FNV-1a) and random per-call tokens.

/// FNV-1a (64 bit) over `parts`, each followed by a NUL but the last: stable across builds
/// and versions, for names derived from an attachment (a temporary interface name, a record's
/// file name).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    joined(parts).fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// FNV-1a (32 bit) over `parts`, NUL-separated as [`fnv1a`]: for numbers that must fit in 32
/// bits (the metric of macvlan's `hostShim` routes).
pub fn fnv1a32(parts: &[&[u8]]) -> u32 {
    joined(parts).fold(0x811c_9dc5, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// The bytes of `parts` with a NUL between each two.
fn joined<'a>(parts: &'a [&'a [u8]]) -> impl Iterator<Item = u8> + 'a {
    parts.iter().enumerate().flat_map(move |(i, p)| {
        let sep: &[u8] = if i + 1 < parts.len() { &[0] } else { &[] };
        p.iter().chain(sep).copied()
    })
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
    random_hex::<8>()
}

/// `N` random bytes as `2N` hex digits.
pub fn random_hex<const N: usize>() -> String {
    random_bytes::<N>().iter().map(|b| format!("{b:02x}")).collect()
}

/// A random number below `bound` (0 for a bound of 0), e.g. to spread the losers of a race.
pub fn random_below(bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    u64::from_ne_bytes(random_bytes::<8>()) % bound
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
        assert_eq!(fnv1a(&[b"a", b"b"]), fnv1a(&[b"a\0b"]), "NUL-separated");
        // FNV-1a 32 of "a" and of "foobar" (published test vectors).
        assert_eq!(fnv1a32(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv1a32(&[b"foo", b"bar"]), fnv1a32(&[b"foo\0bar"]));
        assert_eq!(fnv1a32(&[b"foobar"]), 0xbf9c_f968);
        assert_eq!(fnv1a32(&[]), 0x811c_9dc5);
    }

    #[test]
    fn tokens_differ_and_are_valid() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert!(valid_token(&a) && a.len() == 16);
        assert!(!valid_token("") && !valid_token("a b") && !valid_token("x\n"));
    }
}
