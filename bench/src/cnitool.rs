//! The `cnitool` rows: `cnitool add` and `del` of conf-examples/bridge.conflist, against the
//! same plugin calls made directly and against libcni (tests/libcni-client, a Go runtime on
//! Debian's libcni) doing the same, in alternation, with our plugins (installed as `make
//! install` installs them) in a private host namespace of their own.
//!
//! - The conflist is adapted as the other rows' configs are: `ipMasq` off (no firewall rules)
//!   and a private lease store; bridge, subnet and the rest as in the file.
//! - "Directly" is what a runtime that needs no config lookup and no cache does: the bridge
//!   spawned with the config cnitool gives it (the list's `name` and `cniVersion` injected, keys
//!   sorted), the DEL with the ADD's result as `prevResult`, as cnitool and libcni give it.
//! - The same three with a plugin that only prints a result: the tools' own cost without the
//!   bridge's kernel work and its noise (its DEL varies by milliseconds from call to call).
//! - cnitool's process start (`cnitool --help`) next to Rust's exit-only program (the floor
//!   every Rust program linked with glibc pays here, see "The floor of a process start").
//!
//! A tool's own cost is the median over the cycles of (tool − direct) in the same cycle.

use std::fmt::Write as _;

use super::*;

/// The network of conf-examples/bridge.conflist.
const NET: &str = "rsbr-v4";
const NOOP_NET: &str = "bench-noop";
const NOOP_PLUGIN: &str = "bench-noop";
/// The contestants of the ADD/DEL rows, in the order of their samples.
pub const WHO: [&str; 3] = ["plugins directly", "cnitool", "libcni (Go)"];

/// A plugin that only reads its config and, for ADD, prints a result with one address.
const NOOP_SRC: &str = r##"use std::io::{Read, Write};
fn main() {
    let mut s = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut s);
    if std::env::var_os("CNI_COMMAND").is_some_and(|c| c == "ADD") {
        let _ = std::io::stdout()
            .write_all(br#"{"cniVersion":"1.0.0","ips":[{"address":"10.99.0.2/24"}]}"#);
    }
}
"##;

/// Where the tools run: their binaries, configs and caches, and their namespaces.
struct Bed {
    cnitool: PathBuf,
    cnirt: Result<PathBuf, String>,
    /// `CNI_PATH`: our plugins, then the no-op plugin's directory.
    cni_path: String,
    netconf: PathBuf,
    conflist: PathBuf,
    noop_conflist: PathBuf,
    dir: PathBuf,
    host: Ns,
    /// One container namespace per contestant.
    ctr: [Ns; 3],
}

/// The config a plugin of `list` is given (as cni-client's `plugin_config`, libcni's
/// `buildOneConfig` without capabilities): the list's name and version injected, keys sorted.
fn plugin_config(list: &Value, i: usize, prev: Option<&Value>) -> Vec<u8> {
    let mut conf = list["plugins"][i].as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), list["name"].clone());
    conf.insert("cniVersion".into(), list["cniVersion"].clone());
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    conf.sort_keys();
    serde_json::to_vec(&Value::Object(conf)).expect("serializable")
}

fn write(p: &Path, data: &[u8]) -> Res<()> {
    fs::write(p, data).map_err(|e| format!("writing {}: {e}", p.display()))
}

/// Builds the no-op plugin as the release build is built (static, non-PIE).
fn build_noop(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("noop.rs");
    fs::write(&src, NOOP_SRC).map_err(|e| e.to_string())?;
    let out = dir.join(NOOP_PLUGIN);
    let r = Command::new("rustc")
        .args([
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "relocation-model=static",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|e| format!("rustc: {e}"))?;
    if !r.status.success() {
        return Err(trim(&r.stderr, 200));
    }
    Ok(out)
}

/// Builds the libcni client with the test bed's script (Go, offline, Debian's libcni).
fn build_cnirt(out: &Path) -> Result<PathBuf, String> {
    if Command::new("go").arg("version").output().is_err() {
        return Err("go is not installed (make deps)".into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/libcni-client/build.sh");
    let r = Command::new("bash")
        .arg(&script)
        .arg(out)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !r.status.success() {
        return Err(format!("building the libcni client: {}", trim(&r.stderr, 300)));
    }
    Ok(out.to_path_buf())
}

/// As [`alternate`], but cycle `i` starts with contestant `i mod n`: each comes equally often
/// right after each other's DEL (a bridge DEL leaves the kernel busy for a while, and a tool
/// that starts slowly, as the Go client does, would otherwise find a quieter machine).
fn rotate(
    what: &str,
    contestants: &mut [Contestant],
    nops: usize,
    cycles: usize,
    warmup: usize,
) -> Res<Vec<Vec<Samples>>> {
    let n = contestants.len();
    let mut res = vec![vec![Samples::default(); nops]; n];
    for i in 0..warmup + cycles {
        sys::check_stop()?;
        for k in 0..n {
            let ci = (i + k) % n;
            for (oi, o) in contestants[ci]().into_iter().enumerate().take(nops) {
                let s = &mut res[ci][oi];
                match o {
                    Ok(out) => {
                        if i == 0 {
                            s.first_us = Some(out.wall.as_micros() as u64);
                        }
                        if i >= warmup {
                            s.push(&out);
                        }
                    }
                    Err(e) => {
                        if s.failures == 0 {
                            eprintln!("  {what}: {e}");
                        }
                        s.fail(e);
                    }
                }
            }
        }
    }
    Ok(res)
}

/// The median of (a − b) over the cycles both have, µs, of wall time (`cpu`: of CPU time);
/// `None` when a side failed (the samples are then not paired by cycle).
pub fn paired_median(a: &Samples, b: &Samples, cpu: bool) -> Option<f64> {
    let (x, y) = if cpu {
        (&a.cpu_us, &b.cpu_us)
    } else {
        (&a.wall_us, &b.wall_us)
    };
    if a.failures > 0 || b.failures > 0 || x.is_empty() || x.len() != y.len() {
        return None;
    }
    let mut d: Vec<i64> = x.iter().zip(y).map(|(x, y)| *x as i64 - *y as i64).collect();
    d.sort_unstable();
    let n = d.len();
    Some(if n % 2 == 1 {
        d[n / 2] as f64
    } else {
        (d[n / 2 - 1] + d[n / 2]) as f64 / 2.0
    })
}

impl Bench<'_> {
    fn cnitool_bed(&mut self) -> Res<Option<Bed>> {
        let set = &self.sets[0];
        if !set.has(&["bridge", "host-local"]) {
            self.notes
                .push("cnitool rows skipped: no bridge/host-local of ours to run them with".into());
            return Ok(None);
        }
        let src = self.opts.ours.join("cnitool");
        if !src.is_file() {
            self.notes
                .push(format!("cnitool rows skipped: no {} (make build)", src.display()));
            return Ok(None);
        }
        let tag = format!("{}{}", sys::PREFIX, std::process::id());
        let dir = self.opts.tmp.join(&tag).join("cnitool");
        let (bin, netconf, plugins) = (dir.join("bin"), dir.join("net.d"), dir.join("plugins"));
        for d in [&bin, &netconf, &plugins] {
            fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        // A copy, as the plugins' (a concurrent cargo build cannot swap it mid-run).
        let cnitool = bin.join("cnitool");
        fs::copy(&src, &cnitool).map_err(|e| format!("copying {}: {e}", src.display()))?;
        if let Err(e) = build_noop(&plugins) {
            return Err(format!("building the no-op plugin: {e}"));
        }
        eprintln!("cnitool: building the libcni client (tests/libcni-client)");
        let cnirt = build_cnirt(&bin.join("cnirt"));
        if let Err(e) = &cnirt {
            eprintln!("note: libcni contestant skipped: {e}");
        }

        let mut list: Value = serde_json::from_str(include_str!("../../conf-examples/bridge.conflist"))
            .map_err(|e| format!("conf-examples/bridge.conflist: {e}"))?;
        let data = dir.join("data");
        list["plugins"][0]["ipMasq"] = json!(false);
        list["plugins"][0]["ipam"]["dataDir"] = json!(data.to_string_lossy());
        let conflist = netconf.join("bridge.conflist");
        write(&conflist, &serde_json::to_vec_pretty(&list).expect("serializable"))?;
        let noop_conflist = netconf.join("noop.conflist");
        write(
            &noop_conflist,
            &serde_json::to_vec(&json!({"cniVersion": "1.0.0", "name": NOOP_NET,
                "plugins": [{"type": NOOP_PLUGIN}]}))
            .expect("serializable"),
        )?;

        let names: Vec<String> = ["host", "direct", "tool", "libcni"]
            .iter()
            .map(|n| format!("{tag}-t-{n}"))
            .collect();
        let mut nss = Ns::create_many(&names)?.into_iter();
        let host = nss.next().ok_or("namespace list too short")?;
        let mut ctr = || nss.next().ok_or("namespace list too short");
        let ctr = [ctr()?, ctr()?, ctr()?];
        host.enter()?;
        sys::ip_batch("link set lo up\n")?;
        sys::enter_root()?;
        Ok(Some(Bed {
            cnitool,
            cnirt,
            cni_path: format!("{}:{}", set.bin.display(), plugins.display()),
            netconf,
            conflist,
            noop_conflist,
            dir,
            host,
            ctr,
        }))
    }

    /// `cnitool add`/`del`, libcni's, and the plugin calls they make done directly: the rows
    /// `cnitool.bridge.*` and `cnitool.noop.*` (samples in [`WHO`]'s order) and
    /// `cnitool.start` (cnitool's process start, Rust's exit-only program).
    pub(super) fn part_cnitool(&mut self) -> Res<Vec<Row>> {
        let Some(bed) = self.cnitool_bed()? else {
            return Ok(Vec::new());
        };
        let bed = &bed;
        let list: Value =
            serde_json::from_slice(&fs::read(&bed.conflist).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let noop_list = json!({"cniVersion": "1.0.0", "name": NOOP_NET, "plugins": [{"type": NOOP_PLUGIN}]});
        let mut rows = Vec::new();
        for (key, title, list, net, file, plugin_bin) in [
            (
                "bridge",
                "bridge.conflist (bridge + host-local)",
                &list,
                NET,
                &bed.conflist,
                self.sets[0].bin.join("bridge"),
            ),
            (
                "noop",
                "a plugin that only prints a result",
                &noop_list,
                NOOP_NET,
                &bed.noop_conflist,
                bed.dir.join("plugins").join(NOOP_PLUGIN),
            ),
        ] {
            let base = |c: &mut Command| {
                c.env_clear().env("PATH", SAFE_PATH);
            };
            let check_add = move |o: Out, who: &str| -> Result<Out, String> {
                if !o.status.success() {
                    return Err(failure(who, net, "ADD", &o));
                }
                addresses(&o)?;
                Ok(o)
            };
            let check = |o: Out, who: &str, cmd: &str| -> Result<Out, String> {
                if !o.status.success() {
                    return Err(failure(who, net, cmd, &o));
                }
                Ok(o)
            };
            let direct: Contestant = Box::new(move || {
                let ns = &bed.ctr[0];
                let call = |cmd: &str, conf: &[u8]| -> Result<Out, String> {
                    bed.host.enter()?;
                    let mut c = Command::new(&plugin_bin);
                    base(&mut c);
                    c.env("CNI_COMMAND", cmd)
                        .env("CNI_CONTAINERID", "bench-cnitool-direct")
                        .env("CNI_NETNS", &ns.path)
                        .env("CNI_ARGS", "")
                        .env("CNI_IFNAME", "eth0")
                        .env("CNI_PATH", &bed.cni_path);
                    sys::run(&mut c, conf).map_err(|e| format!("running {}: {e}", plugin_bin.display()))
                };
                let add = call("ADD", &plugin_config(list, 0, None)).and_then(|o| check_add(o, "direct"));
                let prev = add
                    .as_ref()
                    .ok()
                    .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok());
                let del = call("DEL", &plugin_config(list, 0, prev.as_ref())).and_then(|o| check(o, "direct", "DEL"));
                vec![add, del]
            });
            let tool: Contestant = Box::new(move || {
                let ns = bed.ctr[1].path.to_string_lossy().into_owned();
                let call = |cmd: &str| -> Result<Out, String> {
                    bed.host.enter()?;
                    let mut c = Command::new(&bed.cnitool);
                    base(&mut c);
                    c.args([cmd, net, &ns])
                        .env("NETCONFPATH", &bed.netconf)
                        .env("CNI_PATH", &bed.cni_path)
                        .env("CNI_CACHE_DIR", bed.dir.join("cache-cnitool"));
                    sys::run(&mut c, b"").map_err(|e| format!("running cnitool: {e}"))
                };
                let add = call("add").and_then(|o| check_add(o, "cnitool"));
                let del = call("del").and_then(|o| check(o, "cnitool", "DEL"));
                vec![add, del]
            });
            let mut contestants = vec![direct, tool];
            if let Ok(cnirt) = &bed.cnirt {
                contestants.push(Box::new(move || {
                    let ns = bed.ctr[2].path.to_string_lossy().into_owned();
                    let call = |cmd: &str| -> Result<Out, String> {
                        bed.host.enter()?;
                        let mut c = Command::new(cnirt);
                        base(&mut c);
                        c.arg(cmd)
                            .arg(file)
                            .arg(&ns)
                            .env("CNI_PATH", &bed.cni_path)
                            .env("CNI_CACHE_DIR", bed.dir.join("cache-libcni"));
                        sys::run(&mut c, b"").map_err(|e| format!("running the libcni client: {e}"))
                    };
                    let add = call("add").and_then(|o| check_add(o, "libcni"));
                    let del = call("del").and_then(|o| check(o, "libcni", "DEL"));
                    vec![add, del]
                }));
            }
            let what = format!("cnitool, {title}");
            eprintln!("{what}: {} cycles (+{} warm-up)", self.opts.cycles, self.opts.warmup);
            let mut res = rotate(&what, &mut contestants, 2, self.opts.cycles, self.opts.warmup)?;
            if bed.cnirt.is_err() {
                res.push(vec![Samples::default(); 2]);
            }
            let (mut adds, mut dels) = (Vec::new(), Vec::new());
            for (i, mut r) in res.into_iter().enumerate() {
                let (mut d, mut a) = (r.pop().unwrap_or_default(), r.pop().unwrap_or_default());
                if let (2, Err(why)) = (i, &bed.cnirt) {
                    a.skipped = Some(why.clone());
                    d.skipped = Some(why.clone());
                }
                adds.push(a);
                dels.push(d);
            }
            for (op, samples) in [("add", adds), ("del", dels)] {
                let row = Row {
                    key: format!("cnitool.{key}.{op}"),
                    title: format!("{} of {title}", op.to_uppercase()),
                    samples,
                };
                progress_cnitool(&row);
                rows.push(row);
            }
        }

        // cnitool's process start, next to Rust's exit-only program.
        let mut starts: Vec<Contestant> = vec![Box::new(move || {
            vec![(|| {
                bed.host.enter()?;
                let mut c = Command::new(&bed.cnitool);
                c.env_clear().env("PATH", SAFE_PATH).arg("--help");
                sys::run(&mut c, b"").map_err(|e| format!("running cnitool --help: {e}"))
            })()]
        })];
        if let Ok(exit) = &self.exit_rust {
            starts.push(Box::new(move || {
                vec![(|| {
                    bed.host.enter()?;
                    let mut c = Command::new(exit);
                    c.env_clear().env("PATH", SAFE_PATH);
                    sys::run(&mut c, b"").map_err(|e| format!("running {}: {e}", exit.display()))
                })()]
            }));
        }
        eprintln!("cnitool --help: {} cycles", self.opts.cycles);
        let res = rotate("cnitool --help", &mut starts, 1, self.opts.cycles, self.opts.warmup)?;
        let mut samples: Vec<Samples> = res.into_iter().map(|mut v| v.remove(0)).collect();
        if let Err(why) = &self.exit_rust {
            samples.push(Samples {
                skipped: Some(why.clone()),
                ..Default::default()
            });
        }
        let row = Row {
            key: "cnitool.start".into(),
            title: "`cnitool --help` (process start)".into(),
            samples,
        };
        progress_cnitool(&row);
        rows.push(row);
        drop(starts);
        sys::enter_root()?;

        // Every DEL removed its cache entry.
        for c in ["cache-cnitool", "cache-libcni"] {
            let left = fs::read_dir(bed.dir.join(c).join("results"))
                .map(|rd| rd.count())
                .unwrap_or(0);
            if left > 0 {
                self.notes
                    .push(format!("cnitool rows: {left} cache entries left in {c} after the DELs"));
            }
        }
        Ok(rows)
    }
}

fn progress_cnitool(r: &Row) {
    let mut parts = Vec::new();
    let names: &[&str] = if r.key == "cnitool.start" {
        &["cnitool", "Rust exit-only"]
    } else {
        &WHO
    };
    for (s, who) in r.samples.iter().zip(names) {
        match (&s.skipped, s.median()) {
            (Some(why), _) => parts.push(format!("{who}: skipped ({why})")),
            (None, Some(m)) => parts.push(format!(
                "{who} {:.2} ms{}",
                m / 1000.0,
                if s.failures > 0 {
                    format!(", {} FAILED", s.failures)
                } else {
                    String::new()
                }
            )),
            (None, None) => parts.push(format!("{who}: no sample ({} failed)", s.failures)),
        }
    }
    if let (Some(t), Some(d)) = (r.samples.get(1), r.samples.first()) {
        if let (Some(c), Some(cpu)) = (paired_median(t, d, false), paired_median(t, d, true)) {
            if r.key != "cnitool.start" {
                parts.push(format!(
                    "cnitool's own cost {:.2} ms (CPU {:.2} ms)",
                    c / 1000.0,
                    cpu / 1000.0
                ));
            }
        }
    }
    eprintln!("  {}: {}", r.title, parts.join(", "));
}

// ---------------------------------------------------------------------------------------------
// The report's section.

fn ms(us: f64) -> String {
    if us.abs() < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

fn med(s: &Samples) -> String {
    if let Some(why) = &s.skipped {
        return format!("n/a ({why})");
    }
    match s.median() {
        Some(m) => ms(m),
        None => format!("failed ({}×)", s.failures),
    }
}

/// A tool's own cost in one row: sample `i` over the direct calls (sample 0), wall or CPU.
fn own_cost(r: &Row, i: usize, cpu: bool) -> Option<f64> {
    paired_median(r.samples.get(i)?, r.samples.first()?, cpu)
}

/// The target line: (what, measured, met).
pub fn target(r: &Results) -> Option<(String, String, Option<bool>)> {
    let add = r.row("cnitool.bridge.add")?;
    let del = r.row("cnitool.bridge.del")?;
    let (a, d) = (own_cost(add, 1, false), own_cost(del, 1, false));
    let cost = |key: &str, cpu: bool| r.row(key).and_then(|row| own_cost(row, 1, cpu));
    let start = r.row("cnitool.start").and_then(|row| row.samples[0].median());
    let opt = |v: Option<f64>| v.map(ms).unwrap_or_else(|| "–".into());
    Some((
        "`cnitool` add and del of bridge.conflist: its own cost over the plugin calls ≤ 1 ms per command (wall, median of the per-cycle differences)".into(),
        format!(
            "add {}, del {} (CPU {}, {}); with a plugin that only prints a result: add {}, del {} (CPU {}, {}); cnitool's own process start, `--help`, is {} of it ([details](#cnitool-against-the-plugins-called-directly-and-libcni))",
            opt(a),
            opt(d),
            opt(cost("cnitool.bridge.add", true)),
            opt(cost("cnitool.bridge.del", true)),
            opt(cost("cnitool.noop.add", false)),
            opt(cost("cnitool.noop.del", false)),
            opt(cost("cnitool.noop.add", true)),
            opt(cost("cnitool.noop.del", true)),
            opt(start)
        ),
        a.zip(d).map(|(a, d)| a <= 1000.0 && d <= 1000.0),
    ))
}

/// The section of BENCHMARKS.md.
pub fn section(out: &mut String, r: &Results) {
    let rows: Vec<&Row> = [
        "cnitool.bridge.add",
        "cnitool.bridge.del",
        "cnitool.noop.add",
        "cnitool.noop.del",
    ]
    .iter()
    .filter_map(|k| r.row(k))
    .collect();
    if rows.is_empty() {
        return;
    }
    out.push_str(
        "## cnitool against the plugins called directly, and libcni\n\n\
         `cnitool add` and `cnitool del` of conf-examples/bridge.conflist (adapted as the other rows' configs: \
         `ipMasq` off, a private lease store), with our plugins installed as `make install` installs them, in a \
         private host namespace; against the same plugin calls made directly (the config cnitool gives the \
         bridge: the list's `name` and `cniVersion` injected; the DEL with the ADD's result as `prevResult`), and \
         against the libcni client of the tests (`tests/libcni-client`: Go, Debian's libcni 1.1.2) doing the same \
         with its own cache. The three take turns in every cycle (each cycle starting with the next one, so that \
         each follows each other's DEL equally often), each with a container namespace of its own. The same with \
         a plugin that only reads its config and prints a result (static Rust, as ours are built): the tools' own \
         cost without the bridge's kernel work, whose time varies by milliseconds from call to call. **Own cost** \
         is the median over the cycles of (tool − direct) in the same cycle, of wall time and of CPU time (user + \
         system of the whole process tree, which a busy machine's waits for a CPU do not inflate): the tool's \
         process start, its config lookup, its cache (a file created, renamed, removed) and result handling, and \
         its spawning of the plugin.\n\n\
         | operation | plugins directly | cnitool | libcni (Go) | cnitool's own cost | its CPU | libcni's own cost | its CPU |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for row in &rows {
        let cost = |i: usize, cpu: bool| {
            own_cost(row, i, cpu)
                .map(|c| if cpu { ms(c) } else { format!("**{}**", ms(c)) })
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.title,
            med(&row.samples[0]),
            med(&row.samples[1]),
            med(&row.samples[2]),
            cost(1, false),
            cost(1, true),
            cost(2, false),
            cost(2, true),
        );
    }
    out.push('\n');
    if let Some(s) = r.row("cnitool.start") {
        let (t, f) = (s.samples[0].median(), s.samples.get(1).and_then(Samples::median));
        let _ = writeln!(
            out,
            "cnitool's process start (`cnitool --help`, in the same cycles as a Rust program that only exits, built \
             as the release build is): {} against {}{}. That is the floor of any program built this way, and a large \
             part of the tool's own cost; on a virtual machine most of it is glibc's start-up (see [The floor of a \
             process start](#the-floor-of-a-process-start)).\n",
            med(&s.samples[0]),
            med(s.samples.get(1).unwrap_or(&Samples::default())),
            t.zip(f).map(|(t, f)| format!(" ({:.2}×)", t / f)).unwrap_or_default()
        );
    }
    let start = r.row("cnitool.start");
    for row in rows.iter().copied().chain(start) {
        let names: &[&str] = if row.key == "cnitool.start" {
            &["cnitool", "Rust exit-only"]
        } else {
            &WHO
        };
        for (s, who) in row.samples.iter().zip(names) {
            if s.failures > 0 {
                let _ = writeln!(
                    out,
                    "- {} / {who}: {} failed call(s); first: `{}`",
                    row.title,
                    s.failures,
                    s.first_error.as_deref().unwrap_or("?").replace(['`', '\n'], " ")
                );
            }
        }
    }
    out.push('\n');
}
