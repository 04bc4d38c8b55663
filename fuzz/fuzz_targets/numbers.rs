//! No silent narrowing: every integer key of the configs (bridge, macvlan, host-local's
//! `ipam.routes`) and of a result, given a number of any size, either takes exactly that number
//! or is refused with code 7 naming the key's number as written. (An `mtu` of 2^32 + 1500 was
//! taken as 1500, one of 99999999999 reported as 1215752191.)
#![no_main]

use cni::env::Command;
use cni::{CniResult, Error};
use cni_fuzz::bridge_config::BridgeConf;
use cni_fuzz::macvlan_config::MacvlanConf;
use host_local::config::IpamConfig;
use libfuzzer_sys::fuzz_target;

const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"bridge",X}"#;
const MACVLAN: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"macvlan",X}"#;
const IPAM: &str =
    r#"{"cniVersion":"1.1.0","name":"n","ipam":{"subnet":"10.1.0.0/24","routes":[{"dst":"0.0.0.0/0",X}]}}"#;
const RESULT: &str = r#"{"cniVersion":"1.1.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.0.0.2/24"}],"routes":[{"dst":"0.0.0.0/0"}],X}"#;

/// The keys: (which config, the text put in place of `X` with `N` for the number).
const KEYS: [(&str, &str); 17] = [
    ("bridge", r#""mtu":N"#),
    ("bridge", r#""vlan":N"#),
    ("bridge", r#""vlanTrunk":[{"minID":N,"maxID":4094}]"#),
    ("bridge", r#""vlanTrunk":[{"minID":1,"maxID":N}]"#),
    ("bridge", r#""vlanTrunk":[{"id":N}]"#),
    ("macvlan", r#""mtu":N"#),
    ("macvlan", r#""bcqueuelen":N"#),
    ("ipam", r#""mtu":N"#),
    ("ipam", r#""advmss":N"#),
    ("ipam", r#""priority":N"#),
    ("ipam", r#""table":N"#),
    ("ipam", r#""scope":N"#),
    ("result", r#""routes":[{"dst":"0.0.0.0/0","mtu":N}]"#),
    ("result", r#""routes":[{"dst":"0.0.0.0/0","table":N,"scope":N}]"#),
    ("result", r#""interfaces":[{"name":"eth0","mtu":N}]"#),
    ("result", r#""ips":[{"address":"10.0.0.2/24","interface":N}]"#),
    ("result", r#""routes":[{"dst":"0.0.0.0/0","advmss":N,"priority":N}]"#),
];

/// What was decoded: the number each key was given (as the wide integer it is), read back.
fn decoded(which: &str, key: usize, conf: &str) -> Result<Vec<Option<i128>>, Error> {
    let wide = |v: Option<u32>| v.map(i128::from);
    Ok(match which {
        "bridge" => {
            let call = cni_fuzz::call(Command::Add, conf.as_bytes(), "")?;
            let c = BridgeConf::load(&call)?;
            // What is handed to the kernel is the number, or nothing (0: the default).
            assert_eq!(c.mtu(), u32::try_from(c.mtu).ok().filter(|m| *m > 0), "mtu {}", c.mtu);
            assert_eq!(
                c.vlan_id(),
                u16::try_from(c.vlan).ok().filter(|v| *v > 0),
                "vlan {}",
                c.vlan
            );
            match key {
                0 => vec![Some(c.mtu.into())],
                1 => vec![Some(c.vlan.into())],
                2 => vec![c.vlans.first().map(|v| (*v).into())],
                3 => vec![c.vlans.last().map(|v| (*v).into())],
                _ => vec![c.vlans.first().map(|v| (*v).into())],
            }
        }
        "macvlan" => {
            let call = cni_fuzz::call(Command::Add, conf.as_bytes(), "")?;
            let c = MacvlanConf::load(&call)?;
            assert_eq!(c.mtu(), u32::try_from(c.mtu).ok().filter(|m| *m > 0), "mtu {}", c.mtu);
            match key {
                5 => vec![Some(c.mtu.into())],
                _ => vec![Some(c.bcqueuelen.into())],
            }
        }
        "ipam" => {
            let c = IpamConfig::load(conf.as_bytes(), "")?;
            let r = &c.routes[0];
            vec![match key {
                7 => wide(r.mtu),
                8 => wide(r.advmss),
                9 => wide(r.priority),
                10 => wide(r.table),
                _ => r.scope.map(i128::from),
            }]
        }
        _ => {
            let r = CniResult::from_slice(conf.as_bytes())?;
            match key {
                12 => vec![wide(r.routes[0].mtu)],
                13 => vec![wide(r.routes[0].table), r.routes[0].scope.map(i128::from)],
                14 => vec![wide(r.interfaces[0].mtu)],
                15 => vec![r.ips[0].interface.map(|i| i as i128)],
                _ => vec![wide(r.routes[0].advmss), wide(r.routes[0].priority)],
            }
        }
    })
}

/// Whether message `m` holds the number `lit` as a whole (not as a part of a longer one).
fn names(m: &str, lit: &str) -> bool {
    let digit = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit() || c == '-');
    m.match_indices(lit)
        .any(|(i, _)| !digit(m[..i].chars().next_back()) && !digit(m[i + lit.len()..].chars().next()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let key = sel as usize % KEYS.len();
    let (which, field) = KEYS[key];
    let lit = cni_fuzz::integer_literal(rest);
    let template = match which {
        "bridge" => BRIDGE,
        "macvlan" => MACVLAN,
        "ipam" => IPAM,
        _ => RESULT,
    };
    let conf = template.replace('X', &field.replace('N', &lit));
    match decoded(which, key, &conf) {
        Ok(got) => {
            let want = lit.parse::<i128>().ok();
            assert!(want.is_some(), "{conf}: a number beyond 128 bits was taken as {got:?}");
            for g in got {
                assert_eq!(g, want, "{conf}: decoded {g:?}");
            }
        }
        Err(e) => {
            let m = e.to_string();
            // An interface index past the result's interfaces is a result that does not hold
            // together (code 6), also named.
            let bad_index = key == 15 && e.code() == 6 && m.contains("names interface index");
            assert!(e.code() == 7 || bad_index, "{conf}: {e}");
            assert!(names(&m, &lit), "{conf}: {m:?} does not name {lit}");
        }
    }
});
