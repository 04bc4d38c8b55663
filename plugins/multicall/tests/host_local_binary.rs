//! The built binary speaks the protocol (this test also makes `cargo test` build the binary
//! that the workspace's integration tests in `tests/` execute).

use std::io::Write;
use std::process::{Command, Stdio};

fn run(env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_host-local"));
    c.env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_and_about() {
    let (code, out, _) = run(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["supportedVersions"].as_array().unwrap().contains(&"1.1.0".into()));
    let (code, out, err) = run(&[], "");
    assert_eq!((code, out.as_str()), (0, ""));
    assert!(err.contains("host-local"), "{err}");
}

#[test]
fn add_and_del_in_a_temp_store() {
    let t = tempfile::tempdir().unwrap();
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "n",
        "ipam": {"type": "host-local", "subnet": "10.9.0.0/24", "dataDir": t.path()}})
    .to_string();
    let env = |cmd| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
            ("CNI_PATH", "/x"),
        ]
    };
    let (code, out, err) = run(&env("ADD"), &conf);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("10.9.0.2/24"), "{out}");
    let (code, out, err) = run(&env("DEL"), &conf);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(!t.path().join("n/10.9.0.2").exists());
}
