//! What the fuzz targets share: the config modules of the bridge and macvlan binaries (which
//! have no library target; included here by path, unchanged), and a call built as the
//! skeleton builds it.

use cni::env::Command;
use cni::{Call, Error};

/// The bridge plugin's config module.
#[allow(dead_code)]
#[path = "../../plugins/bridge/src/config.rs"]
pub mod bridge_config;

/// The macvlan plugin's config module.
#[allow(dead_code)]
#[path = "../../plugins/macvlan/src/config.rs"]
pub mod macvlan_config;

/// Splits a fuzz input into `CNI_ARGS` and stdin: an input that starts with `ARGS:` holds the
/// args up to its first newline; anything else is all stdin.
pub fn split_args(data: &[u8]) -> (String, &[u8]) {
    if let Some(rest) = data.strip_prefix(b"ARGS:") {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let args = String::from_utf8_lossy(&rest[..end]).into_owned();
        return (args, rest.get(end + 1..).unwrap_or_default());
    }
    (String::new(), data)
}

/// The call the skeleton would make of `stdin` for `command`, with a valid environment; the
/// skeleton's own error otherwise (which must be one of its codes).
pub fn call(command: Command, stdin: &[u8], args: &str) -> Result<Call, Error> {
    let r = cni::skel::test_call(command, stdin, args);
    if let Err(e) = &r {
        assert!(
            matches!(e.code(), 1 | 4 | 6 | 7),
            "parse_call gave code {}: {e}",
            e.code()
        );
        assert!(!e.to_string().is_empty());
    }
    r
}

/// Every message an error of ours carries is printable as the spec's error JSON.
pub fn check_error(e: &Error, codes: &[u32]) {
    assert!(codes.contains(&e.code()), "unexpected code {}: {e}", e.code());
    let j = e.to_json("1.0.0");
    assert_eq!(j["code"], e.code());
    assert!(!e.to_string().is_empty(), "empty message for code {}", e.code());
}

/// A JSON integer literal made from fuzz bytes (canonical: no leading zeros, no `-0`), of any
/// size: an `i64` or `i128` of the bytes, a number near a boundary that integer keys have (a
/// type's, a range's, 2^32 + 1500), or a run of up to 64 digits.
pub fn integer_literal(data: &[u8]) -> String {
    let Some((&mode, rest)) = data.split_first() else {
        return "0".into();
    };
    let mut bytes = [0u8; 16];
    for (b, r) in bytes.iter_mut().zip(rest) {
        *b = *r;
    }
    match mode % 4 {
        0 => i128::from_le_bytes(bytes).to_string(),
        1 => i64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")).to_string(),
        2 => {
            const BASES: [i128; 17] = [
                0,
                1,
                67,
                68,
                255,
                256,
                4094,
                4095,
                65535,
                65536,
                1 << 31,
                1 << 32,
                (1 << 32) + 1500,
                99_999_999_999,
                1 << 63,
                1 << 64,
                1 << 127,
            ];
            let base = BASES[bytes[0] as usize % BASES.len()];
            let delta = i128::from(i16::from_le_bytes([bytes[1], bytes[2]]) % 4);
            let v = base.saturating_add(delta);
            if bytes[3] & 1 == 1 {
                v.saturating_neg().to_string()
            } else {
                v.to_string()
            }
        }
        _ => {
            let digits: String = rest.iter().take(64).map(|b| char::from(b'0' + b % 10)).collect();
            let digits = digits.trim_start_matches('0');
            match (digits.is_empty(), mode & 4 == 4) {
                (true, _) => "0".into(),
                (false, true) => format!("-{digits}"),
                (false, false) => digits.into(),
            }
        }
    }
}
