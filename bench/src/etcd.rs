//! `cni-bench-etcd`: the rows of `make bench` for host-local's etcd store, on a local 3-member
//! cluster started for the run inside a private network namespace (on its 127.0.0.1, free
//! ports, a temp data dir; stopped by pid at the end). The plugins run in that namespace too;
//! every row is measured against the on-disk store in the same namespace, in alternation.
//! Appends (or replaces) the section "The etcd store" of `<out>/BENCHMARKS.md`.
//!
//! ```text
//! cni-bench-etcd        env: QUICK=1, BENCH_CYCLES (30), BENCH_CONC (64), BENCH_OURS, BENCH_OUT, BENCH_TMPDIR
//! ```

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

type Res<T> = Result<T, String>;

const SECTION: &str = "## The etcd store (host-local `ipam.store`)";

fn env_usize(k: &str, quick: usize, full: usize) -> usize {
    let q = std::env::var("QUICK").is_ok_and(|v| v == "1");
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if q { quick } else { full })
}

fn sh(args: &[&str]) -> Res<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The private namespace of the run, removed on drop.
struct Ns(String);

impl Ns {
    fn new(name: String) -> Res<Ns> {
        sh(&["ip", "netns", "add", &name])?;
        let ns = Ns(name);
        sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The members, killed by pid on drop.
struct Cluster {
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: kill on the pid of our own unreaped child.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

fn start_cluster(ns: &Ns, dir: &Path) -> Res<Cluster> {
    let n = 3;
    let port = |i: usize, peer: bool| 23790 + 2 * i as u16 + peer as u16;
    let initial: Vec<String> = (0..n)
        .map(|i| format!("m{i}=http://127.0.0.1:{}", port(i, true)))
        .collect();
    let mut children = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..n {
        let client = format!("http://127.0.0.1:{}", port(i, false));
        let peer = format!("http://127.0.0.1:{}", port(i, true));
        let log = File::create(dir.join(format!("m{i}.log"))).map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "etcd", "--name", &format!("m{i}"), "--data-dir"])
            .arg(dir.join(format!("m{i}")))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args([
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
            ])
            .args(["--log-level", "warn", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("starting etcd (apt-get install etcd-server): {e}"))?;
        children.push(child);
        endpoints.push(client);
    }
    let c = Cluster { children, endpoints };
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new("ip")
            .args(["netns", "exec", &ns.0, "etcdctl", "--dial-timeout=1s"])
            .arg(format!("--endpoints={}", c.endpoints.join(",")))
            .args(["endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(c);
        }
        if Instant::now() > end {
            return Err("etcd members not healthy within 30s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One plugin call inside the namespace (setns between fork and exec, as a runtime does).
fn call(bin: &Path, ns: &File, cmd: &str, id: &str, netns: &str) -> Command {
    let mut c = Command::new(bin);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", bin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fd = ns.as_raw_fd();
    // SAFETY: only setns (async-signal-safe) between fork and exec, on an fd that stays open.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

fn spawn(mut c: Command, conf: &Value) -> Res<Child> {
    let mut ch = c.spawn().map_err(|e| e.to_string())?;
    let mut stdin = ch.stdin.take().expect("piped");
    let _ = stdin.write_all(conf.to_string().as_bytes());
    Ok(ch)
}

fn finish(ch: Child) -> Res<Value> {
    let out = ch.wait_with_output().map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        return Err(format!("{} {}", v, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(v)
}

fn timed(bin: &Path, ns: &File, cmd: &str, id: &str, netns: &str, conf: &Value) -> Res<(Duration, Value)> {
    let t = Instant::now();
    let ch = spawn(call(bin, ns, cmd, id, netns), conf)?;
    let v = finish(ch)?;
    Ok((t.elapsed(), v))
}

/// Installs the plugins of `ours` in `to` as `make install` does: `bridge` (the multicall
/// program) under the three names, hard links, and `host-local-etcd` beside it when built.
fn install(ours: &Path, to: &Path) -> Res<()> {
    std::fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let first = to.join("bridge");
    std::fs::copy(ours.join("bridge"), &first).map_err(|e| format!("copying {}/bridge: {e}", ours.display()))?;
    for n in ["macvlan", "host-local"] {
        std::fs::hard_link(&first, to.join(n)).map_err(|e| format!("linking {n}: {e}"))?;
    }
    let helper = ours.join("host-local-etcd");
    if helper.is_file() {
        std::fs::copy(&helper, to.join("host-local-etcd")).map_err(|e| format!("copying {}: {e}", helper.display()))?;
    }
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

struct Row {
    title: String,
    disk: Duration,
    etcd: Duration,
    /// With `ipam.type` `host-local-etcd`.
    direct: Option<Duration>,
}

fn run() -> Res<String> {
    let cycles = env_usize("BENCH_CYCLES", 5, 30).max(1);
    let conc = env_usize("BENCH_CONC", 16, 64).max(2);
    let ours =
        PathBuf::from(std::env::var("BENCH_OURS").map_err(|_| "BENCH_OURS (the plugins' directory) is not set")?);
    // The members' data on tmpfs unless BENCH_TMPDIR says otherwise: a disk's fsync latency is
    // the disk's, not the store's.
    let tmp = std::env::var("BENCH_TMPDIR").map(PathBuf::from).unwrap_or_else(|_| {
        if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        }
    });
    let dir = tmp.join(format!("cni-bench-etcd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = (|| -> Res<String> {
        let host = Ns::new(format!("cnibe{}", std::process::id()))?;
        let ctr = Ns::new(format!("cnibc{}", std::process::id()))?;
        let cluster = start_cluster(&host, &dir)?;
        let nsf = File::open(host.path()).map_err(|e| e.to_string())?;
        // As `make install` installs them: one file under the three names, the etcd client in
        // host-local-etcd beside it.
        let bins = dir.join("bin");
        install(&ours, &bins)?;
        let hl = bins.join("host-local");
        let br = bins.join("bridge");
        let helper = bins.join("host-local-etcd");
        let direct = helper.is_file();
        let data = dir.join("leases");
        let store = |h: &str| json!({"type": "etcd", "endpoints": cluster.endpoints, "prefix": "/bench", "host": h});
        // Mode 0: on disk; 1: on etcd, `ipam.type` host-local (handed over to the helper);
        // 2: on etcd, `ipam.type` host-local-etcd (the helper run directly).
        let ipam = |mode: usize, subnet: &str| {
            let mut i = json!({"type": if mode == 2 {"host-local-etcd"} else {"host-local"}, "subnet": subnet, "dataDir": data});
            if mode > 0 {
                i["store"] = store("node-a");
            }
            i
        };
        let hl_conf = |mode: usize| json!({"cniVersion": "1.1.0", "name": "hl", "type": "host-local", "ipam": ipam(mode, "10.50.0.0/16")});
        let br_conf = |mode: usize| {
            json!({"cniVersion": "1.1.0", "name": format!("br{mode}"), "type": "bridge",
                   "bridge": format!("cnibe{mode}"), "isGateway": true,
                   "ipam": ipam(mode, &format!("10.6{mode}.0.0/16"))})
        };
        let modes = if direct { 3 } else { 2 };
        let mut rows = Vec::new();
        let (mut add, mut del) = (vec![Vec::new(); modes], vec![Vec::new(); modes]);
        let (mut badd, mut bdel) = (vec![Vec::new(); modes], vec![Vec::new(); modes]);
        let warm = 2;
        for i in 0..cycles + warm {
            for k in 0..modes {
                let id = format!("b{i}");
                let hl = if k == 2 { &helper } else { &hl };
                let (a, _) = timed(hl, &nsf, "ADD", &id, "/x", &hl_conf(k))?;
                let (d, _) = timed(hl, &nsf, "DEL", &id, "/x", &hl_conf(k))?;
                let (ba, _) = timed(&br, &nsf, "ADD", &id, &ctr.path(), &br_conf(k))?;
                let (bd, _) = timed(&br, &nsf, "DEL", &id, &ctr.path(), &br_conf(k))?;
                if i >= warm {
                    add[k].push(a);
                    del[k].push(d);
                    badd[k].push(ba);
                    bdel[k].push(bd);
                }
            }
        }
        for (title, v) in [
            ("host-local ADD", &mut add),
            ("host-local DEL", &mut del),
            ("bridge + host-local ADD", &mut badd),
            ("bridge + host-local DEL", &mut bdel),
        ] {
            rows.push(Row {
                title: title.into(),
                disk: median(&mut v[0]),
                etcd: median(&mut v[1]),
                direct: v.get_mut(2).map(|v| median(v)),
            });
        }

        // Concurrent ADDs split over two hosts (host names node-a and node-b), then their DELs.
        let mut conc_rows = Vec::new();
        for etcd in [false, true] {
            let conf = |h: &str| {
                let mut c = json!({"cniVersion": "1.1.0", "name": "conc", "type": "host-local",
                    "ipam": {"type": "host-local", "subnet": "10.70.0.0/16", "dataDir": data.join(h)}});
                if etcd {
                    c["ipam"]["store"] = store(h);
                }
                c
            };
            let hosts = ["node-a", "node-b"];
            let t = Instant::now();
            let mut ch = Vec::new();
            for i in 0..conc {
                let c = conf(hosts[i % 2]);
                ch.push(spawn(call(&hl, &nsf, "ADD", &format!("c{i}"), "/x"), &c)?);
            }
            let mut ips = Vec::new();
            let mut fails = 0;
            for c in ch {
                match finish(c) {
                    Ok(v) => ips.push(v["ips"][0]["address"].as_str().unwrap_or("").to_string()),
                    Err(_) => fails += 1,
                }
            }
            let add_wall = t.elapsed();
            let mut uniq = ips.clone();
            uniq.sort();
            uniq.dedup();
            let t = Instant::now();
            let mut ch = Vec::new();
            for i in 0..conc {
                let c = conf(hosts[i % 2]);
                ch.push(spawn(call(&hl, &nsf, "DEL", &format!("c{i}"), "/x"), &c)?);
            }
            for c in ch {
                let _ = finish(c);
            }
            let del_wall = t.elapsed();
            conc_rows.push((etcd, add_wall, del_wall, ips.len(), ips.len() - uniq.len(), fails));
        }
        drop(cluster);

        let mut md = format!(
            "{SECTION}\n\nWritten by `cni-bench-etcd` (run by `make bench` after `cni-bench`). A local 3-member etcd {} cluster in a private network namespace (127.0.0.1, data in `{}`), the plugins in the same namespace, installed as `make install` installs them (the multicall program under the three names, `host-local-etcd` beside it); each row alternates the stores, median of {cycles} calls after {warm} warm-up calls. Static release binaries from `{}`. The etcd client is in `host-local-etcd` only: with `ipam.type` `host-local`, host-local (or bridge, for its in-process IPAM) hands the call over to it, which costs its process start; with `ipam.type` `host-local-etcd`, it is run directly.\n\n| operation | on disk | on etcd | etcd / disk | on etcd, `type: host-local-etcd` | that / disk |\n|---|---|---|---|---|---|\n",
            etcd_version(),
            tmp.display(),
            ours.display()
        );
        for r in &rows {
            let (d, dr) = match r.direct {
                Some(d) => (ms(d), format!("{:.2}×", d.as_secs_f64() / r.disk.as_secs_f64())),
                None => ("—".into(), "—".into()),
            };
            md.push_str(&format!(
                "| {} | {} | {} | {:.2}× | {d} | {dr} |\n",
                r.title,
                ms(r.disk),
                ms(r.etcd),
                r.etcd.as_secs_f64() / r.disk.as_secs_f64()
            ));
        }
        md.push_str(&format!(
            "\n{conc} concurrent host-local ADDs split over two hosts (host names `node-a`, `node-b`; on disk each host has its own store, so the two hosts' addresses overlap by design), then their DELs:\n\n| store | ADD wall | DEL wall | successes | duplicate addresses | failures |\n|---|---|---|---|---|---|\n"
        ));
        for (etcd, aw, dw, ok, dup, fails) in conc_rows {
            md.push_str(&format!(
                "| {} | {} | {} | {ok} | {dup} | {fails} |\n",
                if etcd {
                    "etcd (one address space)"
                } else {
                    "disk (two stores)"
                },
                ms(aw),
                ms(dw)
            ));
        }
        Ok(md)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn etcd_version() -> String {
    sh(&["etcd", "--version"])
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let quick = std::env::var("QUICK").is_ok_and(|v| v == "1");
    let out = std::env::var("BENCH_OUT")
        .ok()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| if quick { "target/bench-quick".into() } else { ".".into() });
    match run() {
        Ok(md) => {
            print!("{md}");
            let path = out.join("BENCHMARKS.md");
            let old = std::fs::read_to_string(&path).unwrap_or_default();
            // Replace the section of an earlier run, keep everything else.
            let kept = match old.find(SECTION) {
                Some(i) => {
                    let rest = &old[i + SECTION.len()..];
                    let end = rest.find("\n## ").map(|j| i + SECTION.len() + j + 1);
                    let mut s = old[..i].to_string();
                    if let Some(e) = end {
                        s.push_str(&old[e..]);
                    }
                    s
                }
                None => old,
            };
            let mut text = kept.trim_end().to_string();
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(&md);
            if let Err(e) = std::fs::create_dir_all(&out).and_then(|_| std::fs::write(&path, text)) {
                eprintln!("cni-bench-etcd: writing {}: {e}", path.display());
                std::process::exit(1);
            }
            eprintln!("cni-bench-etcd: wrote the etcd section of {}", path.display());
        }
        Err(e) => {
            eprintln!("cni-bench-etcd: {e}");
            std::process::exit(1);
        }
    }
}
