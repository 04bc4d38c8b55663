//! host-local's lease store reading what it finds on disk: lease files (`Owner::parse`),
//! index entries and the stamp, whatever their content, through lookups, DEL and GC.
//!
//! Input: NUL-separated parts; parts 0-5 are the contents of the leases of 10.1.0.2-7 (an
//! absent part: no lease), part 6 the index entry of `c1:eth0`, part 7 the stamp.
#![no_main]

use std::net::IpAddr;

use host_local::disk::DiskStore;
use host_local::store::{Owner, Store};
use libfuzzer_sys::fuzz_target;

fn ip(i: usize) -> IpAddr {
    format!("10.1.0.{}", i + 2).parse().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    // Parsing alone.
    for p in &parts {
        if let Some(o) = Owner::parse(p) {
            assert!(!o.container_id.is_empty());
            let clean = |s: &str| s == s.trim() && !s.contains("\r\n");
            if let Some(ifn) = &o.ifname {
                if clean(&o.container_id) && clean(ifn) && !ifn.is_empty() {
                    let again = Owner::parse(Owner::lease_content(&o.container_id, ifn).as_bytes());
                    assert_eq!(again.as_ref(), Some(&o));
                }
            }
        }
    }

    let t = tempfile::tempdir().unwrap();
    let net = t.path().join("net");
    std::fs::create_dir(&net).unwrap();
    std::fs::create_dir(net.join(".by-id")).unwrap();
    let mut owners = Vec::new();
    for (i, p) in parts.iter().take(6).enumerate() {
        std::fs::write(net.join(ip(i).to_string()), p).unwrap();
        owners.push(Owner::parse(p));
    }
    if let Some(p) = parts.get(6) {
        std::fs::write(net.join(".by-id/c1:eth0"), p).unwrap();
    }
    if let Some(p) = parts.get(7) {
        std::fs::write(net.join(".by-id/.stamp"), p).unwrap();
    }
    let content = |i: usize| std::fs::read(net.join(ip(i).to_string())).ok();
    let matches = |c: &[u8], id: &str, ifname: &str| {
        let s = String::from_utf8_lossy(c);
        let s = s.trim();
        s == Owner::lease_content(id, ifname) || s == id.trim()
    };

    let mut s = DiskStore::open(t.path(), "net", false).unwrap().unwrap();
    // Lookups return only leases that name the attachment.
    let mut queries: Vec<(String, String)> = vec![("c1".into(), "eth0".into())];
    for o in owners.iter().flatten() {
        queries.push((
            o.container_id.clone(),
            o.ifname.clone().unwrap_or_else(|| "eth0".into()),
        ));
    }
    for (id, ifname) in &queries {
        if let Ok(ips) = s.get_by_id(id, ifname) {
            for a in ips {
                let i = (0..6).find(|&i| ip(i) == a).expect("an address we planted");
                let c = content(i).expect("the lease exists");
                assert!(matches(&c, id, ifname), "{a} ({c:?}) returned for {id}/{ifname}");
            }
        }
    }
    // DEL releases only what names the attachment.
    if let Some((id, ifname)) = queries.get(1).cloned() {
        let before: Vec<Option<Vec<u8>>> = (0..6).map(content).collect();
        if let Ok(released) = s.release_by_id(&id, &ifname) {
            for (i, b) in before.iter().enumerate() {
                let gone = content(i).is_none() && b.is_some();
                assert_eq!(gone, released.contains(&ip(i)), "lease {} {b:?}", ip(i));
                if gone {
                    assert!(matches(b.as_ref().unwrap(), &id, &ifname));
                }
            }
        }
    }
    let _ = s.commit();
    drop(s);
    // GC keeping nothing leaves no lease; the store opens again and answers.
    let mut s = DiskStore::open(t.path(), "net", false).unwrap().unwrap();
    s.gc(&|_| false).unwrap();
    s.commit().unwrap();
    drop(s);
    assert!((0..6).all(|i| content(i).is_none()), "GC kept a lease");
    let mut s = DiskStore::open(t.path(), "net", false).unwrap().unwrap();
    assert!(s.get_by_id("c1", "eth0").unwrap().is_empty());
});
