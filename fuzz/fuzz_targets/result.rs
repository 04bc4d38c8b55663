//! Results and prevResults (`CniResult::from_slice`), printed back in every version.
#![no_main]

use cni::CniResult;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = match CniResult::from_slice(data) {
        Ok(r) => r,
        Err(e) => {
            // 7: a number out of its field's type.
            cni_fuzz::check_error(&e, &[6, 7]);
            return;
        }
    };
    for v in cni::version::SUPPORTED {
        let j = r.to_json(v);
        assert_eq!(j["cniVersion"], *v);
        let back = CniResult::from_value(&j).unwrap_or_else(|e| panic!("{v}: our own output does not parse: {e}\n{j}"));
        if !matches!(*v, "0.1.0" | "0.2.0") {
            assert_eq!(back.ips, r.ips, "{v}");
            assert_eq!(back.dns, r.dns, "{v}");
            assert_eq!(back.interfaces.len(), r.interfaces.len(), "{v}");
            assert_eq!(back.routes.len(), r.routes.len(), "{v}");
        }
    }
    // As a prevResult of a config.
    let mut conf = serde_json::json!({"cniVersion": "1.0.0", "name": "n"});
    conf["prevResult"] = r.to_json("1.0.0");
    let net: cni::NetConf = cni::types::decode(conf.to_string().as_bytes()).expect("a config with our result");
    assert!(net.prev_result().expect("our result as prevResult").is_some());
});
