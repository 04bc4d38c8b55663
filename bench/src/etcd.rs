//! `cni-bench-etcd`: the rows of `make bench` for host-local's etcd store, on a local 3-member
//! cluster started for the run inside a private network namespace (on its 127.0.0.1, fixed
//! ports there, a temp data dir; stopped by pid at the end). The plugins run in that namespace
//! too. Appends (or replaces) the section "The etcd store" of `<out>/BENCHMARKS.md` and writes
//! `<out>/docs/bench-etcd-scale.svg`.
//!
//! - ADD and DEL against the on-disk store, in alternation, through the hand-over and direct;
//! - flat cost: ADD and DEL on networks that already hold 0 to 50,000 leases of 10 hosts
//!   (written through the store: `host-local import`), alternated call by call; the bytes etcd
//!   sends per ADD (its own metrics endpoint);
//! - the storm: 1,000 ADDs from 100 hosts (each call in a UTS namespace of its own with the
//!   host's name), at least 200 in flight, on the network of 50,000 leases, then their DELs;
//!   the same against the disk store (one store per host); etcd's memory meanwhile.
//!
//! ```text
//! cni-bench-etcd   env: QUICK=1, BENCH_CYCLES (30), BENCH_CONC (64), BENCH_ETCD_LEVELS (0,1000,10000,50000),
//!                  BENCH_STORM (1000), BENCH_STORM_HOSTS (100), BENCH_STORM_INFLIGHT (200),
//!                  BENCH_OURS, BENCH_OUT, BENCH_TMPDIR
//! ```

#[allow(dead_code)]
#[path = "svg.rs"]
mod svg;

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

type Res<T> = Result<T, String>;

const SECTION: &str = "## The etcd store (host-local `ipam.store`)";
const CHART: &str = "docs/bench-etcd-scale.svg";

fn quick() -> bool {
    std::env::var("QUICK").is_ok_and(|v| v == "1")
}

fn env_usize(k: &str, quick_v: usize, full: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { quick_v } else { full })
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
    ports: Vec<u16>,
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

impl Cluster {
    /// The resident memory of each member (KiB). `ip netns exec` execs etcd: the pid is etcd's.
    fn rss_kib(&self) -> Vec<u64> {
        self.children
            .iter()
            .map(|c| {
                std::fs::read_to_string(format!("/proc/{}/status", c.id()))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                    })
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The sum over the members of an etcd metric (its /metrics endpoint, read from inside
    /// the namespace).
    fn metric(&self, ns: &File, name: &str) -> Res<f64> {
        let mut total = 0.0;
        for &port in &self.ports {
            total += metric_of(ns, port, name)?;
        }
        Ok(total)
    }
}

/// GET /metrics of the member on `port`, in the namespace `ns` (from a thread that joins it).
fn metric_of(ns: &File, port: u16, name: &str) -> Res<f64> {
    let fd = ns.as_raw_fd();
    let name = name.to_string();
    std::thread::spawn(move || -> Res<f64> {
        // SAFETY: setns of this thread only (it ends after the request).
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| e.to_string())?;
        Ok(body
            .lines()
            .filter(|l| l.starts_with(&name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    })
    .join()
    .map_err(|_| "metrics thread panicked".to_string())?
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
    let c = Cluster {
        children,
        endpoints,
        ports: (0..n).map(|i| port(i, false)).collect(),
    };
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

/// A CA and a certificate for 127.0.0.1 (server and client use) signed by it, made with
/// openssl in `dir`: (ca, cert, key).
fn make_certs(dir: &Path, ec: bool) -> Res<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .map_err(|e| e.to_string())?;
    let (ca, cakey, key, csr, cert, ext) = (
        p("ca.pem"),
        p("ca-key.pem"),
        p("key.pem"),
        p("csr.pem"),
        p("cert.pem"),
        p("ext.cnf"),
    );
    let alg: &[&str] = if ec {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    } else {
        &["-newkey", "rsa:2048"]
    };
    let cmd = |head: &[&'static str], tail: Vec<&str>| -> Vec<String> {
        head.iter()
            .map(|s| s.to_string())
            .chain(alg.iter().map(|s| s.to_string()))
            .chain(tail.into_iter().map(String::from))
            .collect()
    };
    for args in [
        cmd(
            &["openssl", "req", "-x509"],
            vec![
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=bench-ca",
                "-keyout",
                &cakey,
                "-out",
                &ca,
            ],
        ),
        cmd(
            &["openssl", "req"],
            vec!["-nodes", "-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr],
        ),
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &cakey,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        sh(&a)?;
    }
    Ok((ca.into(), cert.into(), key.into()))
}

/// One etcd member serving TLS with client certificates, in `ns`: (the member, its URL).
fn start_tls_member(ns: &Ns, dir: &Path, certs: &(PathBuf, PathBuf, PathBuf), port: u16) -> Res<(Cluster, String)> {
    let (ca, cert, key) = certs;
    let client = format!("https://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", port + 1);
    let name = format!("t{port}");
    let log = File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "etcd", "--name", &name, "--data-dir"])
        .arg(dir.join(&name))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args([
            "--initial-cluster",
            &format!("{name}={peer}"),
            "--initial-cluster-state",
            "new",
        ])
        .arg("--cert-file")
        .arg(cert)
        .arg("--key-file")
        .arg(key)
        .arg("--trusted-ca-file")
        .arg(ca)
        .args(["--client-cert-auth", "--log-level", "warn", "--logger", "zap"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("starting etcd: {e}"))?;
    let c = Cluster {
        children: vec![child],
        endpoints: vec![client.clone()],
        ports: Vec::new(),
    };
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new("ip")
            .args(["netns", "exec", &ns.0, "etcdctl", "--dial-timeout=1s"])
            .arg(format!("--endpoints={client}"))
            .arg(format!("--cacert={}", ca.display()))
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .args(["endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok((c, client));
        }
        if Instant::now() > end {
            return Err("the TLS etcd member not healthy within 30s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One plugin call inside the namespace (setns between fork and exec, as a runtime does);
/// with `host`, in a UTS namespace of its own with that host name (a simulated host).
fn call_on(bin: &Path, ns: &File, cmd: &str, id: &str, netns: &str, host: Option<&str>) -> Command {
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
    let name = host.map(|h| CString::new(h).expect("a host name without NUL"));
    // SAFETY: only setns, unshare and sethostname (async-signal-safe system calls) between
    // fork and exec, on an fd that stays open and a string made before the fork.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(n) = &name {
                if libc::unshare(libc::CLONE_NEWUTS) != 0 || libc::sethostname(n.as_ptr(), n.as_bytes().len()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    c
}

fn call(bin: &Path, ns: &File, cmd: &str, id: &str, netns: &str) -> Command {
    call_on(bin, ns, cmd, id, netns, None)
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

/// A call with `CNI_RS_TRACE=1`: its wall time and its steps (name, µs) as it printed them.
fn traced(bin: &Path, ns: &File, cmd: &str, id: &str, conf: &Value) -> Res<(Duration, Vec<(String, f64)>)> {
    let mut c = call(bin, ns, cmd, id, "/x");
    c.env("CNI_RS_TRACE", "1");
    let t = Instant::now();
    let ch = spawn(c, conf)?;
    let out = ch.wait_with_output().map_err(|e| e.to_string())?;
    let wall = t.elapsed();
    if !out.status.success() {
        return Err(format!("{cmd} {id}: {}", String::from_utf8_lossy(&out.stdout)));
    }
    let steps = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("TRACE "))
        .filter_map(|l| {
            let (_, rest) = l.split_once(' ')?;
            let (name, us) = rest.rsplit_once(' ')?;
            Some((name.to_string(), us.parse().ok()?))
        })
        .collect();
    Ok((wall, steps))
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

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
}

struct Row {
    title: String,
    disk: Duration,
    etcd: Duration,
    /// With `ipam.type` `host-local-etcd`.
    direct: Option<Duration>,
}

/// Fills the etcd store of network `net` (`conf`) with `n` leases of 10 hosts, through the
/// store: each host's leases as an on-disk store, `host-local import`ed as that host's.
/// The addresses follow one another from the start of the range, as round robin leaves them.
fn prefill(helper: &Path, ns: &File, dir: &Path, conf: &Value, subnet_base: [u8; 2], n: usize) -> Res<()> {
    if n == 0 {
        return Ok(());
    }
    let net = conf["name"].as_str().unwrap_or("net").to_string();
    let file = dir.join(format!("{net}.conf"));
    std::fs::write(&file, conf.to_string()).map_err(|e| e.to_string())?;
    for h in 0..10 {
        let data = dir.join(format!("prefill-{net}-{h}"));
        let nd = data.join(&net);
        std::fs::create_dir_all(&nd).map_err(|e| e.to_string())?;
        for i in (h..n).step_by(10) {
            let v = i + 2;
            let ip = format!("{}.{}.{}.{}", subnet_base[0], subnet_base[1], v / 256, v % 256);
            std::fs::write(nd.join(&ip), format!("pre{h}-{i}\r\neth0")).map_err(|e| e.to_string())?;
        }
        let mut c = Command::new(helper);
        c.args(["import"])
            .arg(&file)
            .arg("--data-dir")
            .arg(&data)
            .args(["--host", &format!("node-{h}")])
            .env_remove("CNI_COMMAND")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let fd = ns.as_raw_fd();
        // SAFETY: only setns (async-signal-safe) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = c.output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("import into {net}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let _ = std::fs::remove_dir_all(&data);
    }
    Ok(())
}

/// What a storm did.
struct Storm {
    /// Raft proposals committed per ADD (every transaction is one, also one whose compares
    /// failed), from member 0's metrics.
    proposals_per_add: Option<f64>,
    adds: usize,
    add_ok: usize,
    add_wall: Duration,
    add_p50: Duration,
    add_p99: Duration,
    dels_ok: usize,
    del_wall: Duration,
    del_p50: Duration,
    del_p99: Duration,
    dups: usize,
    max_inflight: usize,
    /// Mean number of calls in flight while the ADDs ran.
    mean_inflight: f64,
    /// Peak resident memory of the members (sum, MiB) before and during.
    rss_before: f64,
    rss_peak: f64,
    first_error: Option<String>,
}

/// Runs `calls` (host index, id) with at most `inflight` at a time; returns per-call
/// (duration, result), the wall time, the peak and mean numbers in flight, and the peak
/// memory of the members.
#[allow(clippy::type_complexity)]
fn run_calls(
    calls: &[(usize, String)],
    inflight: usize,
    mut start: impl FnMut(usize, &str) -> Res<Child>,
    cluster: Option<&Cluster>,
) -> Res<(Vec<(Duration, Res<Value>)>, Duration, usize, f64, f64)> {
    let t0 = Instant::now();
    let mut running: Vec<(usize, Instant, Child)> = Vec::new();
    let mut results: Vec<Option<(Duration, Res<Value>)>> = (0..calls.len()).map(|_| None).collect();
    let mut next = 0;
    let (mut peak, mut area, mut last) = (0usize, 0.0f64, Instant::now());
    let mut rss_peak = 0.0f64;
    let mut sampled = Instant::now() - Duration::from_secs(1);
    while next < calls.len() || !running.is_empty() {
        while next < calls.len() && running.len() < inflight {
            let (h, id) = &calls[next];
            running.push((next, Instant::now(), start(*h, id)?));
            next += 1;
        }
        peak = peak.max(running.len());
        let now = Instant::now();
        area += running.len() as f64 * (now - last).as_secs_f64();
        last = now;
        if let Some(c) = cluster {
            if sampled.elapsed() > Duration::from_millis(100) {
                rss_peak = rss_peak.max(c.rss_kib().iter().sum::<u64>() as f64 / 1024.0);
                sampled = Instant::now();
            }
        }
        let mut i = 0;
        let mut any = false;
        while i < running.len() {
            if running[i].2.try_wait().map_err(|e| e.to_string())?.is_some() {
                let (k, t, ch) = running.swap_remove(i);
                let d = t.elapsed();
                results[k] = Some((d, finish(ch)));
                any = true;
            } else {
                i += 1;
            }
        }
        if !any {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let wall = t0.elapsed();
    let mean = area / wall.as_secs_f64().max(1e-9);
    Ok((
        results.into_iter().map(|r| r.expect("every call ran")).collect(),
        wall,
        peak,
        mean,
        rss_peak,
    ))
}

#[allow(clippy::too_many_arguments)]
fn storm(
    bin: &Path,
    ns: &File,
    conf_of: &dyn Fn(usize) -> Value,
    hosts: usize,
    per_host: usize,
    inflight: usize,
    cluster: Option<&Cluster>,
    tag: &str,
) -> Res<Storm> {
    let host_name = |h: usize| format!("storm{tag}-{h}");
    let calls: Vec<(usize, String)> = (0..per_host)
        .flat_map(|j| (0..hosts).map(move |h| (h, format!("s{tag}-{h}-{j}"))))
        .collect();
    let rss_before = cluster
        .map(|c| c.rss_kib().iter().sum::<u64>() as f64 / 1024.0)
        .unwrap_or(0.0);
    let proposals = |c: &Cluster| metric_of(ns, c.ports[0], "etcd_server_proposals_committed_total").ok();
    let p0 = cluster.and_then(proposals);
    let (adds, add_wall, max_inflight, mean_inflight, rss_peak) = run_calls(
        &calls,
        inflight,
        |h, id| spawn(call_on(bin, ns, "ADD", id, "/x", Some(&host_name(h))), &conf_of(h)),
        cluster,
    )?;
    let p1 = cluster.and_then(proposals);
    let proposals_per_add = p0.zip(p1).map(|(a, b)| (b - a) / calls.len() as f64);
    let mut seen = HashSet::new();
    let mut dups = 0;
    let mut first_error = None;
    let mut ok_t = Vec::new();
    for (d, r) in &adds {
        match r {
            Ok(v) => {
                ok_t.push(*d);
                for ip in v["ips"].as_array().into_iter().flatten() {
                    if !seen.insert(ip["address"].as_str().unwrap_or("").to_string()) {
                        dups += 1;
                    }
                }
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e.clone());
                }
            }
        }
    }
    let mut all_t: Vec<Duration> = adds.iter().map(|(d, _)| *d).collect();
    let (dels, del_wall, _, _, rss_peak2) = run_calls(
        &calls,
        inflight,
        |h, id| spawn(call_on(bin, ns, "DEL", id, "/x", Some(&host_name(h))), &conf_of(h)),
        cluster,
    )?;
    let mut del_t: Vec<Duration> = dels.iter().map(|(d, _)| *d).collect();
    let dels_ok = dels.iter().filter(|(_, r)| r.is_ok()).count();
    if first_error.is_none() {
        first_error = dels.iter().find_map(|(_, r)| r.as_ref().err().cloned());
    }
    Ok(Storm {
        proposals_per_add,
        adds: calls.len(),
        add_ok: ok_t.len(),
        add_wall,
        add_p50: pct(&mut all_t, 0.5),
        add_p99: pct(&mut all_t, 0.99),
        dels_ok,
        del_wall,
        del_p50: pct(&mut del_t, 0.5),
        del_p99: pct(&mut del_t, 0.99),
        dups,
        max_inflight,
        mean_inflight,
        rss_before,
        rss_peak: rss_peak.max(rss_peak2),
        first_error,
    })
}

/// An operator command of `host-local-etcd` in the namespace: (time, exit status, stdout).
fn op_cmd(helper: &Path, ns: &File, args: &[&std::ffi::OsStr]) -> Res<(Duration, i32, String)> {
    let mut c = Command::new(helper);
    c.args(args).env_remove("CNI_COMMAND").stderr(Stdio::null());
    let fd = ns.as_raw_fd();
    // SAFETY: only setns (async-signal-safe) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t = Instant::now();
    let out = c.output().map_err(|e| e.to_string())?;
    Ok((
        t.elapsed(),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// The number of leases of a network, by `host-local-etcd leases`.
fn count_leases(helper: &Path, ns: &File, dir: &Path, conf: &Value) -> Res<usize> {
    let file = dir.join(format!("{}-count.conf", conf["name"].as_str().unwrap_or("net")));
    std::fs::write(&file, conf.to_string()).map_err(|e| e.to_string())?;
    let mut c = Command::new(helper);
    c.arg("leases").arg(&file).env_remove("CNI_COMMAND");
    let fd = ns.as_raw_fd();
    // SAFETY: only setns (async-signal-safe) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = c.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().count().saturating_sub(1))
}

fn run() -> Res<(String, Option<String>)> {
    let cycles = env_usize("BENCH_CYCLES", 5, 30).max(1);
    let conc = env_usize("BENCH_CONC", 16, 64).max(2);
    let levels: Vec<usize> = std::env::var("BENCH_ETCD_LEVELS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            if quick() {
                vec![0, 2000]
            } else {
                vec![0, 1000, 10000, 50000]
            }
        });
    let storm_n = env_usize("BENCH_STORM", 100, 1000);
    let storm_hosts = env_usize("BENCH_STORM_HOSTS", 10, 100).max(1);
    let storm_inflight = env_usize("BENCH_STORM_INFLIGHT", 50, 200).max(1);
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
    let result = (|| -> Res<(String, Option<String>)> {
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

        // Where an ADD's time goes, on both etcd paths: the steps the helper traces, and the
        // rest (process starts, the hand-over's exec, exit).
        let groups: [(&str, &[&str]); 5] = [
            (
                "config (stdin, parse, ipam)",
                &["read stdin", "parse config", "load ipam config"],
            ),
            ("etcd connect (TCP, TLS, HTTP/2)", &["etcd connect"]),
            ("etcd read (one request)", &["etcd read"]),
            ("boot record, allocation", &["boot record", "allocate"]),
            ("etcd write (one transaction)", &["etcd write"]),
        ];
        let mut breakdown: Vec<(String, Vec<Vec<f64>>)> = Vec::new();
        let mut paths: Vec<(String, &PathBuf, Value)> =
            vec![("hand-over (`type: host-local`)".into(), &hl, hl_conf(1))];
        if direct {
            paths.push(("direct (`type: host-local-etcd`)".into(), &helper, hl_conf(2)));
        }
        // The same, direct, on one member that serves TLS with client certificates (RSA 2048
        // and ECDSA P-256 keys).
        let mut tls_members = Vec::new();
        if direct {
            for (ec, port, label) in [(false, 23810u16, "RSA 2048"), (true, 23812, "ECDSA P-256")] {
                let certs = make_certs(&dir.join(format!("tls{port}")), ec)?;
                let (m, url) = start_tls_member(&host, &dir, &certs, port)?;
                let mut c = hl_conf(2);
                c["name"] = json!(format!("hltls{port}"));
                c["ipam"]["store"] = json!({"type": "etcd", "endpoints": [url], "prefix": "/bench", "host": "node-a",
                    "tls": {"ca": certs.0, "cert": certs.1, "key": certs.2}});
                paths.push((format!("direct, TLS {label} (one member)"), &helper, c));
                tls_members.push(m);
            }
        }
        for (k, (name, bin, conf)) in paths.iter().enumerate() {
            let mut cols: Vec<Vec<f64>> = vec![Vec::new(); groups.len() + 2];
            for i in 0..cycles + warm {
                let id = format!("t{k}-{i}");
                let (wall, steps) = traced(bin, &nsf, "ADD", &id, conf)?;
                timed(bin, &nsf, "DEL", &id, "/x", conf)?;
                if i < warm {
                    continue;
                }
                let wall_us = wall.as_secs_f64() * 1e6;
                let mut sum = 0.0;
                for (g, (_, names)) in groups.iter().enumerate() {
                    let v: f64 = steps
                        .iter()
                        .filter(|(n, _)| names.contains(&n.as_str()))
                        .map(|(_, u)| u)
                        .sum();
                    sum += v;
                    cols[g].push(v);
                }
                cols[groups.len()].push((wall_us - sum).max(0.0));
                cols[groups.len() + 1].push(wall_us);
            }
            breakdown.push((name.to_string(), cols));
        }
        drop(tls_members);

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

        // Flat cost: one network per level, prefilled through the store; ADD and DEL alternated
        // over the levels call by call.
        let level_conf = |i: usize| {
            json!({"cniVersion": "1.1.0", "name": format!("flat{i}"), "type": "host-local",
                   "ipam": {"type": "host-local", "subnet": format!("10.{}.0.0/16", 100 + i), "dataDir": data,
                            "store": store("node-a")}})
        };
        let t = Instant::now();
        for (i, &n) in levels.iter().enumerate() {
            prefill(&helper, &nsf, &dir, &level_conf(i), [10, 100 + i as u8], n)?;
        }
        let prefill_time = t.elapsed();
        let (mut ladd, mut ldel) = (vec![Vec::new(); levels.len()], vec![Vec::new(); levels.len()]);
        for c in 0..cycles + warm {
            for i in 0..levels.len() {
                let id = format!("f{c}");
                let (a, _) = timed(&hl, &nsf, "ADD", &id, "/x", &level_conf(i))?;
                let (d, _) = timed(&hl, &nsf, "DEL", &id, "/x", &level_conf(i))?;
                if c >= warm {
                    ladd[i].push(a);
                    ldel[i].push(d);
                }
            }
        }
        // The bytes etcd sends and receives per ADD, from its metrics, at each level.
        let sent = "etcd_network_client_grpc_sent_bytes_total";
        let recv = "etcd_network_client_grpc_received_bytes_total";
        let mut bytes = Vec::new();
        let nb = cycles.clamp(5, 20);
        for i in 0..levels.len() {
            let (s0, r0) = (cluster.metric(&nsf, sent)?, cluster.metric(&nsf, recv)?);
            for c in 0..nb {
                timed(&hl, &nsf, "ADD", &format!("m{c}"), "/x", &level_conf(i))?;
            }
            let (s1, r1) = (cluster.metric(&nsf, sent)?, cluster.metric(&nsf, recv)?);
            for c in 0..nb {
                timed(&hl, &nsf, "DEL", &format!("m{c}"), "/x", &level_conf(i))?;
            }
            bytes.push(((s1 - s0) / nb as f64, (r1 - r0) / nb as f64));
        }

        // The operator commands at scale: one import of as many leases as the fullest level
        // (one host), the listing, and the release of that host.
        let ops_n = levels[levels.len() - 1].max(1000);
        let ops_conf = json!({"cniVersion": "1.1.0", "name": "ops", "type": "host-local",
            "ipam": {"type": "host-local", "subnet": "10.98.0.0/16", "dataDir": data, "store": store("node-a")}});
        let ops_file = dir.join("ops.conf");
        std::fs::write(&ops_file, ops_conf.to_string()).map_err(|e| e.to_string())?;
        let ops_data = dir.join("ops-disk");
        std::fs::create_dir_all(ops_data.join("ops")).map_err(|e| e.to_string())?;
        for i in 0..ops_n {
            let v = i + 2;
            std::fs::write(
                ops_data.join("ops").join(format!("10.98.{}.{}", v / 256, v % 256)),
                format!("op{i}\r\neth0"),
            )
            .map_err(|e| e.to_string())?;
        }
        let os = |s: &str| std::ffi::OsString::from(s);
        let (imp_t, imp_code, imp_out) = op_cmd(
            &helper,
            &nsf,
            &[
                &os("import"),
                ops_file.as_os_str(),
                &os("--data-dir"),
                ops_data.as_os_str(),
                &os("--host"),
                &os("node-ops"),
            ],
        )?;
        let (list_t, list_code, list_out) = op_cmd(&helper, &nsf, &[&os("leases"), ops_file.as_os_str()])?;
        let (rel_t, rel_code, rel_out) = op_cmd(
            &helper,
            &nsf,
            &[&os("release-host"), ops_file.as_os_str(), &os("node-ops")],
        )?;
        let last_line = |s: &str| s.lines().last().unwrap_or("").to_string();
        let ops_rows = [
            (
                format!("`import` of {ops_n} leases (one host)"),
                imp_t,
                imp_code,
                last_line(&imp_out),
            ),
            (
                "`leases` of the network".to_string(),
                list_t,
                list_code,
                format!("{} lease(s) listed", list_out.lines().count().saturating_sub(1)),
            ),
            (
                format!("`release-host` of those {ops_n}"),
                rel_t,
                rel_code,
                last_line(&rel_out),
            ),
        ];

        // The storm, on the fullest network, then against the disk store (one per host).
        let top = levels.len() - 1;
        let per_host = (storm_n / storm_hosts).max(1);
        // No ipam.store.host: each call's host name is its simulated host's.
        let storm_conf = |_: usize| {
            let mut c = level_conf(top);
            if let Some(s) = c["ipam"]["store"].as_object_mut() {
                s.remove("host");
                // As an operator of a big network sets it (and as the issue measured): the
                // longest deadline allowed.
                s.insert("timeout".into(), json!(10));
            }
            c
        };
        let etcd_storm = storm(
            &hl,
            &nsf,
            &storm_conf,
            storm_hosts,
            per_host,
            storm_inflight,
            Some(&cluster),
            "e",
        )?;
        let left = count_leases(&helper, &nsf, &dir, &level_conf(top))?;
        let disk_conf = |h: usize| {
            json!({"cniVersion": "1.1.0", "name": "stormdisk", "type": "host-local",
                   "ipam": {"type": "host-local", "subnet": "10.99.0.0/16", "dataDir": data.join(format!("storm-{h}"))}})
        };
        let disk_storm = storm(&hl, &nsf, &disk_conf, storm_hosts, per_host, storm_inflight, None, "d")?;
        drop(cluster);

        let mut md = format!(
            "{SECTION}\n\nWritten by `cni-bench-etcd` (run by `make bench` after `cni-bench`). A local 3-member etcd {} cluster in a private network namespace (127.0.0.1, data in `{}`), the plugins in the same namespace, installed as `make install` installs them (the multicall program under the three names, `host-local-etcd` beside it); each row alternates the stores, median of {cycles} calls after {warm} warm-up calls. Static release binaries from `{}`. The etcd client is in `host-local-etcd` only: with `ipam.type` `host-local`, host-local (or bridge, for its in-process IPAM) hands the call over to it, which costs its process start; with `ipam.type` `host-local-etcd`, it is run directly.\n\n| operation | on disk | on etcd | etcd / disk | on etcd, `type: host-local-etcd` | that / disk |\n|---|---|---|---|---|---|\n",
            etcd_version(),
            tmp.display(),
            ours.display()
        );
        for r in &rows {
            let (d, dr) = match r.direct {
                Some(d) => (ms(d), ratio(d, r.disk)),
                None => ("—".into(), "—".into()),
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {d} | {dr} |\n",
                r.title,
                ms(r.disk),
                ms(r.etcd),
                ratio(r.etcd, r.disk)
            ));
        }
        let med = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        md.push_str("\nWhere a host-local ADD on etcd spends its time (median µs of each part over the same calls, `CNI_RS_TRACE=1`; the rest is the process starts, the hand-over's `execve` and the exit):\n\n| part |");
        for (name, _) in &breakdown {
            md.push_str(&format!(" {name} |"));
        }
        md.push_str("\n|---|");
        for _ in &breakdown {
            md.push_str("---|");
        }
        md.push('\n');
        let mut names: Vec<&str> = groups.iter().map(|(n, _)| *n).collect();
        names.push("the rest: process start(s), exit");
        names.push("the whole call (wall)");
        for (g, n) in names.iter().enumerate() {
            md.push_str(&format!("| {n} |"));
            for (_, cols) in &breakdown {
                md.push_str(&format!(" {:.0} |", med(&cols[g])));
            }
            md.push('\n');
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
        let (mut a0, mut d0) = (ladd[0].clone(), ldel[0].clone());
        let (a0, d0) = (median(&mut a0), median(&mut d0));
        md.push_str(&format!(
            "\n### Flat cost: the number of leases in the network\n\nhost-local ADD and DEL on etcd (`ipam.type` `host-local`, the hand-over) on networks (a /16 each) that already hold as many leases of other containers, of 10 hosts, written through the store (`host-local import` of an on-disk store per host, {:.1} s for all of them): the addresses follow one another from the start of the range, as round robin leaves them, and the ADDs go on after them. The levels alternate call by call, median of {cycles} calls each; the bytes are etcd's own count (`{sent}` and `{recv}` of the three members' metrics endpoints) over {nb} ADDs. See the chart [{CHART}]({CHART}).\n\n| leases in the network | ADD | DEL | ADD / empty | DEL / empty | bytes etcd sent per ADD | bytes etcd received per ADD |\n|---|---|---|---|---|---|---|\n",
            prefill_time.as_secs_f64()
        ));
        let mut series = [Vec::new(), Vec::new()];
        for (i, &n) in levels.iter().enumerate() {
            let (a, d) = (median(&mut ladd[i]), median(&mut ldel[i]));
            series[0].push((n as f64, a.as_secs_f64() * 1e3));
            series[1].push((n as f64, d.as_secs_f64() * 1e3));
            md.push_str(&format!(
                "| {n} | {} | {} | {} | {} | {:.0} | {:.0} |\n",
                ms(a),
                ms(d),
                ratio(a, a0),
                ratio(d, d0),
                bytes[i].0,
                bytes[i].1
            ));
        }
        md.push_str(&format!(
            "\n![host-local ADD and DEL on etcd against the number of leases in the network]({CHART})\n"
        ));
        md.push_str(&format!(
            "\n### The storm: {} ADDs from {storm_hosts} hosts at once\n\n{per_host} ADDs per host, each call in a UTS namespace of its own with its host's name (`storm…-<n>`), at most {storm_inflight} in flight, then the {} DELs the same way; `ipam.store.timeout` 10 (the longest allowed). On etcd, on the network of {} leases above (one address space for all hosts); on disk, for scale, each host its own store (so the hosts' addresses overlap there by design: its duplicates count those). The latency is one call's, from its start to its end; etcd's memory is the three members' resident memory summed, sampled every 0.1 s.\n\n| store | ADDs ok | ADD wall | ADD p50 | ADD p99 | in flight (peak / mean) | duplicate addresses | DELs ok | DEL wall | DEL p50 | DEL p99 | leases left | etcd memory (before → peak) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
            etcd_storm.adds, etcd_storm.adds, levels[top]
        ));
        for (name, s, left) in [
            ("etcd", &etcd_storm, Some(left.saturating_sub(levels[top]))),
            ("disk (one store per host)", &disk_storm, None),
        ] {
            md.push_str(&format!(
                "| {name} | {} of {} | {} | {} | {} | {} / {:.0} | {} | {} of {} | {} | {} | {} | {} | {} |\n",
                s.add_ok,
                s.adds,
                ms(s.add_wall),
                ms(s.add_p50),
                ms(s.add_p99),
                s.max_inflight,
                s.mean_inflight,
                s.dups,
                s.dels_ok,
                s.adds,
                ms(s.del_wall),
                ms(s.del_p50),
                ms(s.del_p99),
                left.map(|l| l.to_string()).unwrap_or_else(|| "—".into()),
                if s.rss_peak > 0.0 {
                    format!("{:.0} → {:.0} MiB", s.rss_before, s.rss_peak)
                } else {
                    "—".into()
                }
            ));
        }
        md.push_str(
            "\n### The operator commands at scale\n\nEach in batches of 100 leases with a deadline each (`ipam.store.timeout`, 5 s), on a network of its own.\n\n| command | time | exit status | what it said last |\n|---|---|---|---|\n"
        );
        for (what, t, code, said) in &ops_rows {
            md.push_str(&format!(
                "| {what} | {:.2} s | {code} | {} |\n",
                t.as_secs_f64(),
                said.replace('|', "\\|")
            ));
        }
        if let Some(p) = etcd_storm.proposals_per_add {
            md.push_str(&format!(
                "\nOn etcd, {p:.2} transactions per ADD of the storm (raft proposals committed, `etcd_server_proposals_committed_total`: one per transaction, also one whose compares failed: a lost race or a held address).\n"
            ));
        }
        if let Some(e) = etcd_storm.first_error.as_ref().or(disk_storm.first_error.as_ref()) {
            md.push_str(&format!("\nFirst failure: `{}`\n", e.replace('`', "'")));
        }
        let chart = svg::scale_chart(
            "host-local ADD and DEL on etcd, median time against the number of leases in the network",
            &[
                svg::Series {
                    label: "etcd ADD".into(),
                    color: "#d95f02",
                    dashed: false,
                    points: series[0].clone(),
                },
                svg::Series {
                    label: "etcd DEL".into(),
                    color: "#d95f02",
                    dashed: true,
                    points: series[1].clone(),
                },
            ],
            "etcd",
        )
        .replace(">both plugin sets<", ">from 0 ms<");
        Ok((md, Some(chart)))
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
    let out = std::env::var("BENCH_OUT")
        .ok()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if quick() {
                "target/bench-quick".into()
            } else {
                ".".into()
            }
        });
    match run() {
        Ok((md, chart)) => {
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
            let write = std::fs::create_dir_all(out.join("docs"))
                .and_then(|_| std::fs::write(&path, text))
                .and_then(|_| match &chart {
                    Some(svg) => std::fs::write(out.join(CHART), svg),
                    None => Ok(()),
                });
            if let Err(e) = write {
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
