//! The measurements: every row runs the same configs against our plugins and the reference
//! ones, in alternation, each set in its own private "host" namespace with its own lease store.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};

use crate::stats::Samples;
use crate::sys::{self, Ns, Out, Res};
use crate::Opts;

/// The `cnitool` rows (a child module: it uses this one's runner).
#[path = "cnitool.rs"]
pub mod cnitool;

pub const PLUGINS: [&str; 3] = ["bridge", "macvlan", "host-local"];
const SET_KEYS: [&str; 2] = ["ours", "reference"];
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The container namespaces of the sequential rows, one per row (per set).
const CTRS: [&str; 7] = ["hl", "br4", "br6", "mv", "scale", "bighl", "bigbr"];
/// The scale rows' /16.
const SCALE_BASE: u32 = u32::from_be_bytes([10, 20, 0, 0]);
const SCALE_NET: &str = "bench-scale";
const CONC_NET: &str = "bench-conc";
/// The large-config rows: this many keys in the config's top-level object, each with a value
/// of [`BIG_VALUE_LEN`] bytes: 3.9 MiB, under the plugins' 4 MiB cap.
pub const BIG_KEYS: usize = 36_000;
const BIG_VALUE_LEN: usize = 101;

/// One plugin set: binaries copied to a private directory (so a concurrent `cargo build`
/// cannot change them mid-run), a private host namespace and a private lease store.
pub struct Set {
    pub key: &'static str,
    pub src: PathBuf,
    bin: PathBuf,
    pub missing: Vec<String>,
    host: Ns,
    data: PathBuf,
    ctr: BTreeMap<&'static str, Ns>,
    conc: Vec<Ns>,
}

impl Set {
    fn has(&self, plugins: &[&str]) -> bool {
        plugins.iter().all(|p| !self.missing.iter().any(|m| m == p))
    }
}

/// One line of a table: the same operation by each contestant (the sets, or the floor).
#[derive(Debug, Clone)]
pub struct Row {
    pub key: String,
    pub title: String,
    pub samples: Vec<Samples>,
}

impl Row {
    pub fn to_json(&self) -> Value {
        json!({"key": self.key, "title": self.title,
               "samples": self.samples.iter().map(|s| s.to_json()).collect::<Vec<_>>()})
    }
}

/// The concurrency part, per set.
#[derive(Debug, Default, Clone)]
pub struct ConcSet {
    pub skipped: Option<String>,
    /// Round 0: the first round, which also creates the bridge (not in the medians).
    pub cold_add_us: Option<u64>,
    pub add_wall_us: Vec<u64>,
    pub del_wall_us: Vec<u64>,
    pub adds: usize,
    pub add_failures: usize,
    pub duplicates: usize,
    pub del_failures: usize,
    pub leases_left: usize,
    pub first_error: Option<String>,
}

impl ConcSet {
    pub fn to_json(&self) -> Value {
        json!({"skipped": self.skipped, "cold_add_us": self.cold_add_us, "add_wall_us": self.add_wall_us,
               "del_wall_us": self.del_wall_us, "adds": self.adds, "add_failures": self.add_failures,
               "duplicates": self.duplicates, "del_failures": self.del_failures,
               "leases_left": self.leases_left, "first_error": self.first_error})
    }
}

/// The per-step breakdown of our bridge ADDs.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    pub skipped: Option<String>,
    pub wall_us: Vec<u64>,
    /// (process, step) in the order first seen, with one value per traced ADD (0 if absent).
    pub steps: Vec<(String, String, Vec<u64>)>,
    /// Per ADD: wall − Σ bridge steps (bridge's process start, exit, untraced code).
    pub bridge_rest_us: Vec<u64>,
    /// Per ADD: "ipam ADD" − Σ host-local steps (host-local's process start, exit, pipes).
    pub ipam_rest_us: Vec<u64>,
    pub unparsed: usize,
    /// In the same cycles: VERSION of bridge and of host-local, and an untraced ADD.
    pub version_bridge_us: Vec<u64>,
    pub version_hl_us: Vec<u64>,
    pub plain_wall_us: Vec<u64>,
    /// host-local ran in bridge's process (its lines were `<pid>-host-local`).
    pub in_process: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub mem_mib: u64,
    pub kernel: String,
    pub os: String,
    pub rustc: String,
    pub commit: String,
    pub ref_version: String,
    pub iproute2: String,
    pub data_fs: String,
    pub load_start: String,
    pub load_end: String,
    pub command: String,
    pub date: String,
}

/// Everything the report is made from.
pub struct Results {
    pub opts: Opts,
    pub machine: Machine,
    pub sets: Vec<(String, String, Vec<String>)>,
    pub rows: Vec<Row>,
    pub conc: Vec<ConcSet>,
    pub trace: Trace,
    pub prefill_ok: Vec<Option<bool>>,
    pub seconds: f64,
    pub notes: Vec<String>,
    /// What one `cpuid` instruction costs here, µs ([`cpuid_cost_us`]).
    pub cpuid_us: Option<f64>,
    /// Instructions and `cpuid`s of whole runs, counted by single-stepping
    /// ([`sys::count_instructions`]): (program, instructions, cpuids).
    pub steps: Vec<(String, u64, u64)>,
}

impl Results {
    pub fn row(&self, key: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == key)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "machine": {
                "cpu": self.machine.cpu, "cores": self.machine.cores, "mem_mib": self.machine.mem_mib,
                "kernel": self.machine.kernel, "os": self.machine.os, "rustc": self.machine.rustc,
                "commit": self.machine.commit, "reference_version": self.machine.ref_version,
                "iproute2": self.machine.iproute2, "data_fs": self.machine.data_fs,
                "loadavg_start": self.machine.load_start, "loadavg_end": self.machine.load_end,
                "command": self.machine.command, "date": self.machine.date,
                "cpuid_us": self.cpuid_us,
                "single_stepped": self.steps.iter().map(|(p, n, c)| json!({"program": p, "instructions": n, "cpuid": c})).collect::<Vec<_>>(),
            },
            "options": {
                "cycles": self.opts.cycles, "warmup": self.opts.warmup, "conc": self.opts.conc,
                "conc_rounds": self.opts.conc_rounds, "leases": self.opts.leases,
                "scale_cycles": self.opts.scale_cycles, "scale_bridge_cycles": self.opts.scale_bridge_cycles, "trace_cycles": self.opts.trace_cycles,
                "bigconf_cycles": self.opts.bigconf_cycles,
                "quick": self.opts.quick, "only": self.opts.only,
            },
            "sets": self.sets.iter().map(|(k, src, missing)| json!({"key": k, "dir": src, "missing": missing})).collect::<Vec<_>>(),
            "rows": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "conc": self.conc.iter().map(ConcSet::to_json).collect::<Vec<_>>(),
            "trace": {
                "skipped": self.trace.skipped, "wall_us": self.trace.wall_us,
                "steps": self.trace.steps.iter().map(|(p, s, v)| json!({"process": p, "step": s, "us": v})).collect::<Vec<_>>(),
                "bridge_rest_us": self.trace.bridge_rest_us, "ipam_rest_us": self.trace.ipam_rest_us,
                "version_bridge_us": self.trace.version_bridge_us, "version_hl_us": self.trace.version_hl_us,
                "plain_wall_us": self.trace.plain_wall_us,
            },
            "prefill_ok": self.prefill_ok,
            "seconds": self.seconds,
            "notes": self.notes,
        })
    }
}

/// (process, step, µs) of one TRACE line.
type TraceLine = (String, String, u64);

/// One contestant's cycle: the outcomes of its operations (ADD, DEL; or VERSION).
type Contestant<'a> = Box<dyn FnMut() -> Vec<Result<Out, String>> + 'a>;

/// Runs `warmup + cycles` cycles; in each, every contestant in turn (ours, reference, …), so
/// that a noisy machine hurts all alike. Returns the samples per contestant and operation.
fn alternate(
    what: &str,
    contestants: &mut [Contestant],
    nops: usize,
    cycles: usize,
    warmup: usize,
) -> Res<Vec<Vec<Samples>>> {
    let mut res = vec![vec![Samples::default(); nops]; contestants.len()];
    for i in 0..warmup + cycles {
        sys::check_stop()?;
        for (ci, c) in contestants.iter_mut().enumerate() {
            for (oi, o) in c().into_iter().enumerate().take(nops) {
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

fn trim(b: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    if s.len() > max {
        let mut cut = s.len() - max;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        format!("…{}", &s[cut..])
    } else {
        s.to_string()
    }
}

/// The addresses of an ADD result.
fn addresses(out: &Out) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("result is not JSON ({e}): {}", trim(&out.stdout, 200)))?;
    let ips: Vec<String> = v["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty() {
        return Err(format!("result has no ips: {}", trim(&out.stdout, 200)));
    }
    Ok(ips)
}

fn is_lease_name(n: &str) -> bool {
    n.parse::<std::net::IpAddr>().is_ok()
}

fn count_leases(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| is_lease_name(&e.file_name().to_string_lossy()))
                .count()
        })
        .unwrap_or(0)
}

struct Bench<'o> {
    opts: &'o Opts,
    sets: Vec<Set>,
    floor_host: Ns,
    floor_ctr: Ns,
    /// A minimal static program that only exits: the floor of a process start.
    exit_floor: Option<PathBuf>,
    /// Programs that only exit, built with the toolchains the plugins are built with: C with
    /// glibc static (`gcc -static`), and Rust static non-PIE as the release build is. What the
    /// C library's and Rust's standard start-up add to the floor. `Err`: why not built.
    exit_libc: Result<PathBuf, String>,
    exit_rust: Result<PathBuf, String>,
    notes: Vec<String>,
}

/// `ip ARGS` with `stdin`, started in `ns` as the plugins are: its output, or the failure of
/// the floor's step `what`.
fn run_ip(ns: &Ns, args: &[&str], stdin: &str, what: &str) -> Result<Out, String> {
    ns.enter()?;
    let mut c = Command::new("ip");
    c.env_clear().env("PATH", SAFE_PATH).args(args);
    let out = sys::run(&mut c, stdin.as_bytes()).map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(failure("floor", "ip", what, &out))
    }
}

/// Two processes run one after the other, as one step: their wall and CPU times added, the
/// larger peak memory.
fn both(a: Out, b: Out) -> Out {
    Out {
        wall: a.wall + b.wall,
        cpu: a.cpu + b.cpu,
        maxrss_kib: a.maxrss_kib.max(b.maxrss_kib),
        ..b
    }
}

/// Builds the exit-only programs of the C library and of Rust in `dir` (see [`Bench`]).
fn build_exit_programs(dir: &Path) -> (Result<PathBuf, String>, Result<PathBuf, String>) {
    let build = |src_name: &str, src: &str, out: &str, cmd: &mut Command| -> Result<PathBuf, String> {
        let (s, o) = (dir.join(src_name), dir.join(out));
        fs::write(&s, src).map_err(|e| format!("writing {}: {e}", s.display()))?;
        let res = cmd.arg(&s).arg("-o").arg(&o).output().map_err(|e| e.to_string())?;
        if !res.status.success() {
            return Err(String::from_utf8_lossy(&res.stderr)
                .lines()
                .next()
                .unwrap_or("failed")
                .to_string());
        }
        Ok(o)
    };
    let c = build(
        "exit.c",
        "int main(void) { return 0; }\n",
        "exit-only-c",
        Command::new("gcc").args(["-O2", "-static"]),
    );
    let rust = build(
        "exit.rs",
        "fn main() {}\n",
        "exit-only-rs",
        Command::new("rustc").args([
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "relocation-model=static",
        ]),
    );
    (c, rust)
}

/// What one `cpuid` instruction costs on this machine, µs (median of 20 batches of 100): on a
/// virtual machine every one traps to the hypervisor, and a C library's start-up runs dozens to
/// learn the CPU's features and caches.
pub fn cpuid_cost_us() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut per: Vec<f64> = (0..20)
            .map(|_| {
                let t = Instant::now();
                for i in 0..100u32 {
                    #[allow(unused_unsafe)]
                    // SAFETY: cpuid is available on every x86-64 CPU; leaf 4 is what glibc asks.
                    let r = unsafe { std::arch::x86_64::__cpuid_count(4, i % 4) };
                    std::hint::black_box(r);
                }
                t.elapsed().as_secs_f64() * 1e6 / 100.0
            })
            .collect();
        per.sort_by(f64::total_cmp);
        Some(per[per.len() / 2])
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// A complete static x86-64 ELF program of 129 bytes that only calls `exit(0)`: one loadable
/// segment, no interpreter, no libc, no relocations. What a process start costs at the least.
pub fn exit_only_elf() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const CODE: [u8; 9] = [0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]; // mov eax,60; xor edi,edi; syscall
    let len = (64 + 56 + CODE.len()) as u64;
    let mut e = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    e.extend(2u16.to_le_bytes()); // ET_EXEC
    e.extend(0x3eu16.to_le_bytes()); // x86-64
    e.extend(1u32.to_le_bytes());
    e.extend((BASE + 120).to_le_bytes()); // entry
    e.extend(64u64.to_le_bytes()); // program headers
    e.extend(0u64.to_le_bytes()); // no section headers
    e.extend(0u32.to_le_bytes());
    for h in [64u16, 56, 1, 0, 0, 0] {
        e.extend(h.to_le_bytes());
    }
    e.extend(1u32.to_le_bytes()); // PT_LOAD
    e.extend(5u32.to_le_bytes()); // R + X
    e.extend(0u64.to_le_bytes());
    e.extend(BASE.to_le_bytes());
    e.extend(BASE.to_le_bytes());
    e.extend(len.to_le_bytes());
    e.extend(len.to_le_bytes());
    e.extend(0x1000u64.to_le_bytes());
    e.extend(CODE);
    e
}

impl Bench<'_> {
    /// The network config `plugin` (a JSON object without cniVersion/name) for set `s`.
    fn conf(&self, s: usize, name: &str, mut plugin: Value) -> Vec<u8> {
        if let Some(ipam) = plugin.get_mut("ipam") {
            ipam["dataDir"] = json!(self.sets[s].data.to_string_lossy());
        }
        let mut v = json!({"cniVersion": "1.0.0", "name": name});
        if let (Some(o), Some(p)) = (v.as_object_mut(), plugin.as_object()) {
            for (k, x) in p {
                o.insert(k.clone(), x.clone());
            }
        }
        serde_json::to_vec(&v).expect("serializable")
    }

    /// Runs one plugin of set `s` in its host namespace, as a runtime does.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        s: usize,
        plugin: &str,
        cmd: &str,
        ctr: Option<&Ns>,
        id: &str,
        conf: &[u8],
        trace: bool,
    ) -> Result<Out, String> {
        let set = &self.sets[s];
        set.host.enter()?;
        let mut c = self.command(s, plugin, cmd, ctr, id, trace);
        let out = sys::run(&mut c, conf).map_err(|e| format!("running {}/{plugin}: {e}", set.key))?;
        if !out.status.success() {
            return Err(failure(set.key, plugin, cmd, &out));
        }
        Ok(out)
    }

    fn command(&self, s: usize, plugin: &str, cmd: &str, ctr: Option<&Ns>, id: &str, trace: bool) -> Command {
        let set = &self.sets[s];
        let mut c = Command::new(set.bin.join(plugin));
        c.env_clear()
            .env("PATH", SAFE_PATH)
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &set.bin);
        if let Some(ns) = ctr {
            c.env("CNI_NETNS", &ns.path);
        }
        if trace {
            c.env("CNI_RS_TRACE", "1");
        }
        c
    }

    fn set_indexes(&self, need: &[&str]) -> Vec<usize> {
        (0..self.sets.len()).filter(|&s| self.sets[s].has(need)).collect()
    }

    /// Samples for every set; sets without the binaries get a `skipped` note.
    fn spread(&self, need: &[&str], measured: &[usize], got: Vec<Samples>) -> Vec<Samples> {
        let mut out: Vec<Samples> = Vec::new();
        let mut it = got.into_iter();
        for s in 0..self.sets.len() {
            if measured.contains(&s) {
                out.push(it.next().unwrap_or_default());
            } else {
                let missing: Vec<&str> = need
                    .iter()
                    .copied()
                    .filter(|p| self.sets[s].missing.iter().any(|m| m == p))
                    .collect();
                out.push(Samples {
                    skipped: Some(format!("no {} binary", missing.join("/"))),
                    ..Default::default()
                });
            }
        }
        out
    }

    /// One cycle of set `s`: ADD (result checked: `n_addrs` addresses) then DEL.
    fn add_del(
        &self,
        s: usize,
        plugin: &'static str,
        ctr: &'static str,
        id: String,
        conf: Vec<u8>,
        n_addrs: usize,
    ) -> Contestant<'_> {
        Box::new(move || {
            let ns = &self.sets[s].ctr[ctr];
            let add = self.call(s, plugin, "ADD", Some(ns), &id, &conf, false).and_then(|o| {
                let a = addresses(&o)?;
                if a.len() != n_addrs {
                    return Err(format!("expected {n_addrs} addresses, got {a:?}"));
                }
                Ok(o)
            });
            let del = self.call(s, plugin, "DEL", Some(ns), &id, &conf, false);
            vec![add, del]
        })
    }

    /// ADD and DEL of `plugin` with `conf_of(set)`, alternating between the sets (and `extra`,
    /// the floor, when given). Returns the ADD row and the DEL row.
    #[allow(clippy::too_many_arguments)]
    fn add_del_rows(
        &self,
        key: &str,
        title: &str,
        plugin: &'static str,
        need: &[&str],
        ctr: &'static str,
        conf: &dyn Fn(usize) -> Vec<u8>,
        n_addrs: usize,
        cycles: usize,
        extra: Vec<Contestant>,
    ) -> Res<(Row, Row)> {
        let idx = self.set_indexes(need);
        let mut contestants: Vec<Contestant> = idx
            .iter()
            .map(|&s| self.add_del(s, plugin, ctr, format!("bench-{ctr}"), conf(s), n_addrs))
            .collect();
        let n_extra = extra.len();
        contestants.extend(extra);
        eprintln!("{title}: {} cycles (+{} warm-up)", cycles, self.opts.warmup);
        let mut res = alternate(title, &mut contestants, 2, cycles, self.opts.warmup)?;
        let extra_res = res.split_off(res.len() - n_extra);
        let (mut adds, mut dels) = (Vec::new(), Vec::new());
        for mut r in res {
            dels.push(r.pop().unwrap_or_default());
            adds.push(r.pop().unwrap_or_default());
        }
        let mut add = Row {
            key: format!("{key}.add"),
            title: format!("{title} ADD"),
            samples: self.spread(need, &idx, adds),
        };
        let mut del = Row {
            key: format!("{key}.del"),
            title: format!("{title} DEL"),
            samples: self.spread(need, &idx, dels),
        };
        for mut e in extra_res {
            del.samples.push(e.pop().unwrap_or_default());
            add.samples.push(e.pop().unwrap_or_default());
        }
        progress(&add);
        progress(&del);
        Ok((add, del))
    }

    // ----------------------------------------------------------------------------------------

    fn part_version(&self) -> Res<Vec<Row>> {
        let mut rows = Vec::new();
        for p in PLUGINS {
            let idx = self.set_indexes(&[p]);
            let mut contestants: Vec<Contestant> = idx
                .iter()
                .map(|&s| -> Contestant {
                    Box::new(move || vec![self.call(s, p, "VERSION", None, "", br#"{"cniVersion":"1.0.0"}"#, false)])
                })
                .collect();
            // The floors: the exit-only programs, spawned the same way in the same cycles.
            let floors: Vec<Result<&PathBuf, String>> = vec![
                self.exit_floor.as_ref().ok_or_else(|| "not on x86-64".to_string()),
                self.exit_libc.as_ref().map_err(|e| e.clone()),
                self.exit_rust.as_ref().map_err(|e| e.clone()),
            ];
            for exit in floors.iter().filter_map(|f| f.as_ref().ok()) {
                let exit: &PathBuf = exit;
                contestants.push(Box::new(move || {
                    vec![(|| {
                        self.floor_host.enter()?;
                        let mut c = Command::new(exit);
                        c.env_clear().env("PATH", SAFE_PATH).env("CNI_COMMAND", "VERSION");
                        sys::run(&mut c, br#"{"cniVersion":"1.0.0"}"#)
                            .map_err(|e| format!("running {}: {e}", exit.display()))
                    })()]
                }));
            }
            eprintln!("{p} VERSION: {} cycles", self.opts.cycles);
            let mut res = alternate(p, &mut contestants, 1, self.opts.cycles, self.opts.warmup)?;
            let n = floors.iter().filter(|f| f.is_ok()).count();
            let mut measured = res.split_off(res.len() - n).into_iter().map(|mut v| v.remove(0));
            // One sample per floor (129 bytes, C, Rust); one not built says why.
            let floor_samples: Vec<Samples> = floors
                .iter()
                .map(|f| match f {
                    Ok(_) => measured.next().unwrap_or_default(),
                    Err(why) => Samples {
                        skipped: Some(why.clone()),
                        ..Default::default()
                    },
                })
                .collect();
            let got = res.into_iter().map(|mut v| v.remove(0)).collect();
            let mut row = Row {
                key: format!("version.{p}"),
                title: format!("`{p}` VERSION (process start)"),
                samples: self.spread(&[p], &idx, got),
            };
            row.samples.extend(floor_samples);
            progress(&row);
            rows.push(row);
        }
        Ok(rows)
    }

    /// The exit-only programs and our bridge's VERSION, single-stepped (see
    /// [`sys::count_instructions`]): where a process start's `cpuid`s come from.
    fn single_step(&self) -> Vec<(String, u64, u64)> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let mut progs: Vec<(String, PathBuf)> = Vec::new();
            if let Some(p) = &self.exit_floor {
                progs.push(("exit-only (129 bytes)".into(), p.clone()));
            }
            if let Ok(p) = &self.exit_libc {
                progs.push(("C, glibc static".into(), p.clone()));
            }
            if let Ok(p) = &self.exit_rust {
                progs.push(("Rust, static non-PIE".into(), p.clone()));
            }
            if let Some(s) = self.sets.first().filter(|s| !s.missing.iter().any(|m| m == "bridge")) {
                progs.push(("ours: `bridge` VERSION".into(), s.bin.join("bridge")));
            }
            for (label, p) in progs {
                let mut c = Command::new(&p);
                c.env_clear().env("PATH", SAFE_PATH).env("CNI_COMMAND", "VERSION");
                match sys::count_instructions(&mut c) {
                    Ok((n, cpuid)) => v.push((label, n, cpuid)),
                    Err(e) => eprintln!("note: single-stepping {}: {e}", p.display()),
                }
            }
        }
        v
    }

    fn part_host_local(&self) -> Res<Vec<Row>> {
        let conf = |s| {
            self.conf(
                s,
                "bench-hl",
                json!({"type": "bridge", "bridge": "cnibr9",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.10.0.0/24"}]]}}),
            )
        };
        let (a, d) = self.add_del_rows(
            "hl",
            "host-local",
            "host-local",
            &["host-local"],
            "hl",
            &conf,
            1,
            self.opts.cycles,
            Vec::new(),
        )?;
        Ok(vec![a, d])
    }

    /// The floor: the kernel work of one bridge ADD (and DEL) done by `ip -batch`, one process
    /// per namespace, each started directly in its namespace as the plugins are.
    fn floor_contestant(&self) -> Contestant<'_> {
        Box::new(move || {
            let host_side = format!(
                "link add cnibfv0 type veth peer name eth0 netns {}\nlink set cnibfv0 master cnibrf up\n",
                self.floor_ctr.name
            );
            let ctr_side =
                "addr add 10.40.0.2/24 dev eth0\nlink set eth0 up\nroute add default via 10.40.0.1 dev eth0\nlink set lo up\n";
            let add = run_ip(&self.floor_host, &["-batch", "-"], &host_side, "ADD (host side)").and_then(|h| {
                Ok(both(
                    h,
                    run_ip(&self.floor_ctr, &["-batch", "-"], ctr_side, "ADD (container side)")?,
                ))
            });
            let del = run_ip(&self.floor_ctr, &["link", "del", "eth0"], "", "DEL");
            vec![add, del]
        })
    }

    /// The process starts of the floor alone: the same `ip -batch` processes with nothing to
    /// do (two for the ADD, one for the DEL), so that the floor minus them is the kernel work.
    fn ip_start_contestant(&self) -> Contestant<'_> {
        Box::new(move || {
            let idle = |ns: &Ns| run_ip(ns, &["-batch", "-"], "", "an empty batch");
            let add = idle(&self.floor_host).and_then(|h| Ok(both(h, idle(&self.floor_ctr)?)));
            vec![add, idle(&self.floor_ctr)]
        })
    }

    fn part_bridge(&self) -> Res<Vec<Row>> {
        let need = ["bridge", "host-local"];
        let v4 = |s| {
            self.conf(
                s,
                "bench-br4",
                json!({"type": "bridge", "bridge": "cnibr0", "isGateway": true,
                "isDefaultGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.11.0.0/24"}]]}}),
            )
        };
        let dual = |s| {
            self.conf(s, "bench-br6", json!({"type": "bridge", "bridge": "cnibr1", "isGateway": true,
                "isDefaultGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.12.0.0/24"}], [{"subnet": "fd00:12::/64"}]]}}))
        };
        let (a4, d4) = self.add_del_rows(
            "br4",
            "bridge + host-local, IPv4",
            "bridge",
            &need,
            "br4",
            &v4,
            1,
            self.opts.cycles,
            vec![self.floor_contestant(), self.ip_start_contestant()],
        )?;
        let (a6, d6) = self.add_del_rows(
            "br6",
            "bridge + host-local, dual stack",
            "bridge",
            &need,
            "br6",
            &dual,
            2,
            self.opts.cycles,
            Vec::new(),
        )?;
        Ok(vec![a4, d4, a6, d6])
    }

    fn part_macvlan(&self) -> Res<Vec<Row>> {
        let conf = |s| {
            self.conf(
                s,
                "bench-mv",
                json!({"type": "macvlan", "master": "cnibmv0", "mode": "bridge",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.13.0.0/24"}]]}}),
            )
        };
        let (a, d) = self.add_del_rows(
            "mv",
            "macvlan + host-local",
            "macvlan",
            &["macvlan", "host-local"],
            "mv",
            &conf,
            1,
            self.opts.cycles,
            Vec::new(),
        )?;
        Ok(vec![a, d])
    }

    /// The config `plugin` for set `s` with [`BIG_KEYS`] more keys that no plugin knows (as a
    /// runtime's annotations could be): valid JSON of 3.9 MiB, each key once.
    fn big_conf(&self, s: usize, name: &str, plugin: Value) -> Vec<u8> {
        let mut c = self.conf(s, name, plugin);
        c.pop(); // the closing brace
        let value = "v".repeat(BIG_VALUE_LEN);
        for i in 0..BIG_KEYS {
            c.extend_from_slice(format!(",\"x-{i:05}\":\"{value}\"").as_bytes());
        }
        c.push(b'}');
        c
    }

    /// host-local alone and bridge + host-local with a config of 3.9 MiB: the time to decode
    /// it, on top of the usual call (the reference decodes it in about 0.1 s).
    fn part_bigconf(&self) -> Res<Vec<Row>> {
        let cycles = self.opts.bigconf_cycles;
        let hl = |s| {
            self.big_conf(
                s,
                "bench-bighl",
                json!({"type": "bridge", "bridge": "cnibr4",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.16.0.0/24"}]]}}),
            )
        };
        let br = |s| {
            self.big_conf(
                s,
                "bench-bigbr",
                json!({"type": "bridge", "bridge": "cnibr5", "isGateway": true,
                "isDefaultGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.17.0.0/24"}]]}}),
            )
        };
        let title = format!("config of 3.9 MiB with {} keys", thousands(BIG_KEYS));
        let (a, d) = self.add_del_rows(
            "big.hl",
            &format!("host-local, {title}"),
            "host-local",
            &["host-local"],
            "bighl",
            &hl,
            1,
            cycles,
            Vec::new(),
        )?;
        let (ba, bd) = self.add_del_rows(
            "big.br",
            &format!("bridge + host-local, {title}"),
            "bridge",
            &["bridge", "host-local"],
            "bigbr",
            &br,
            1,
            cycles,
            Vec::new(),
        )?;
        Ok(vec![a, d, ba, bd])
    }

    /// K ADDs of set `s` started at once (one per container namespace), then K DELs.
    fn conc_round(&self, s: usize, round: usize, conf: &[u8], cs: &mut ConcSet, timed: bool) -> Res<()> {
        let set = &self.sets[s];
        let k = self.opts.conc;
        let ids: Vec<String> = (0..k).map(|i| format!("bench-conc-{round}-{i}")).collect();
        for (cmd, is_add) in [("ADD", true), ("DEL", false)] {
            sys::check_stop()?;
            set.host.enter()?;
            let t0 = Instant::now();
            let mut running = Vec::with_capacity(k);
            for (i, id) in ids.iter().enumerate() {
                let mut c = self.command(s, "bridge", cmd, Some(&set.conc[i]), id, false);
                running.push(sys::start(&mut c, conf));
            }
            let outs: Vec<Result<Out, String>> = running
                .into_iter()
                .map(|r| {
                    let out = r.and_then(sys::finish).map_err(|e| format!("running bridge: {e}"))?;
                    if out.status.success() {
                        Ok(out)
                    } else {
                        Err(failure(set.key, "bridge", cmd, &out))
                    }
                })
                .collect();
            let wall = t0.elapsed().as_micros() as u64;
            let mut addrs = Vec::new();
            let mut failed = 0;
            for o in outs {
                match o.and_then(|o| if is_add { addresses(&o) } else { Ok(vec![]) }) {
                    Ok(a) => addrs.extend(a),
                    Err(e) => {
                        failed += 1;
                        if cs.first_error.is_none() {
                            eprintln!("  concurrent {cmd} ({}): {e}", set.key);
                            cs.first_error = Some(e);
                        }
                    }
                }
            }
            if is_add {
                let n = addrs.len();
                addrs.sort();
                addrs.dedup();
                cs.adds += k - failed;
                cs.add_failures += failed;
                cs.duplicates += n - addrs.len();
                if round == 0 {
                    cs.cold_add_us = Some(wall);
                }
                if timed {
                    cs.add_wall_us.push(wall);
                }
            } else {
                cs.del_failures += failed;
                if timed {
                    cs.del_wall_us.push(wall);
                }
                cs.leases_left += count_leases(&set.data.join(CONC_NET));
            }
        }
        Ok(())
    }

    fn part_conc(&self) -> Res<Vec<ConcSet>> {
        let need = ["bridge", "host-local"];
        let mut res: Vec<ConcSet> = self
            .sets
            .iter()
            .map(|s| ConcSet {
                skipped: (!s.has(&need)).then(|| "no bridge/host-local binary".to_string()),
                ..Default::default()
            })
            .collect();
        let confs: Vec<Vec<u8>> = (0..self.sets.len())
            .map(|s| {
                self.conf(
                    s,
                    CONC_NET,
                    json!({"type": "bridge", "bridge": "cnibr2", "isGateway": true,
                    "isDefaultGateway": true, "ipMasq": false,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.14.0.0/24"}]]}}),
                )
            })
            .collect();
        let rounds = self.opts.conc_rounds;
        eprintln!(
            "{} concurrent ADDs, then DELs: 1 warm-up round + {rounds}",
            self.opts.conc
        );
        for round in 0..=rounds {
            for s in 0..self.sets.len() {
                if res[s].skipped.is_none() {
                    self.conc_round(s, round, &confs[s], &mut res[s], round > 0 || rounds == 0)?;
                }
            }
        }
        for (s, c) in res.iter().enumerate() {
            if c.skipped.is_none() {
                eprintln!(
                    "  {}: ADD wall median {:.1} ms, DEL {:.1} ms, {} ok, {} failed, {} duplicates, {} DEL failures, {} leases left",
                    self.sets[s].key,
                    crate::stats::quantile(&c.add_wall_us, 0.5).unwrap_or(f64::NAN) / 1000.0,
                    crate::stats::quantile(&c.del_wall_us, 0.5).unwrap_or(f64::NAN) / 1000.0,
                    c.adds,
                    c.add_failures,
                    c.duplicates,
                    c.del_failures,
                    c.leases_left
                );
            }
        }
        Ok(res)
    }

    /// Writes `n` leases into the store of network `net` of set `s`, in the reference layout.
    fn prefill(&self, s: usize, net: &str, n: usize) -> Res<()> {
        let dir = self.sets[s].data.join(net);
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for k in 0..n {
            if k % 1000 == 0 {
                sys::check_stop()?;
            }
            let ip = Ipv4Addr::from(SCALE_BASE + 2 + k as u32);
            let p = dir.join(ip.to_string());
            fs::write(&p, format!("fill-{k}\r\neth0")).map_err(|e| format!("writing {}: {e}", p.display()))?;
        }
        if n > 0 {
            let last = Ipv4Addr::from(SCALE_BASE + 2 + n as u32 - 1);
            fs::write(dir.join("last_reserved_ip.0"), last.to_string())
                .map_err(|e| format!("writing last_reserved_ip.0: {e}"))?;
        }
        Ok(())
    }

    /// host-local ADD and DEL on stores that already hold N leases: one store (network) per N
    /// and per set, all prefilled first, then measured in the same cycles (every N of ours and
    /// of the reference in turn), so that the growth with N is not hidden or faked by a change
    /// of machine load between the lease counts.
    fn part_scale(&self) -> Res<(Vec<Row>, Vec<Option<bool>>)> {
        let mut rows = Vec::new();
        let net = |l: usize| format!("{SCALE_NET}-{l}");
        let conf = |s: usize, l: usize| {
            self.conf(
                s,
                &net(l),
                json!({"type": "bridge", "bridge": "cnibr3", "isGateway": true,
                "isDefaultGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.20.0.0/16"}]]}}),
            )
        };
        let mut levels = self.opts.leases.clone();
        levels.sort_unstable();
        levels.dedup();
        let max = levels.last().copied().unwrap_or(0);
        let t = Instant::now();
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..self.sets.len())
                .map(|s| {
                    let levels = &levels;
                    let net = &net;
                    sc.spawn(move || levels.iter().try_for_each(|&l| self.prefill(s, &net(l), l)))
                })
                .collect();
            hs.into_iter()
                .try_for_each(|h| h.join().map_err(|_| "prefill thread panicked".to_string())?)
        })?;
        eprintln!(
            "stores prefilled with {} leases per set ({:.1} s)",
            levels.iter().map(|&l| thousands(l)).collect::<Vec<_>>().join(", "),
            t.elapsed().as_secs_f64()
        );
        let idx = self.set_indexes(&["host-local"]);
        let mut contestants: Vec<Contestant> = Vec::new();
        for &l in &levels {
            for &s in &idx {
                contestants.push(self.add_del(s, "host-local", "scale", "bench-scale".into(), conf(s, l), 1));
            }
        }
        let cycles = self.opts.scale_cycles;
        eprintln!(
            "host-local on {} stores of N leases: {cycles} cycles (+{} warm-up)",
            levels.len(),
            self.opts.warmup
        );
        let mut res = alternate("host-local, N leases", &mut contestants, 2, cycles, self.opts.warmup)?.into_iter();
        for &l in &levels {
            let (mut adds, mut dels) = (Vec::new(), Vec::new());
            for _ in &idx {
                let mut r = res.next().unwrap_or_default();
                dels.push(r.pop().unwrap_or_default());
                adds.push(r.pop().unwrap_or_default());
            }
            let title = format!("host-local, {} leases", thousands(l));
            let a = Row {
                key: format!("scale.add.{l}"),
                title: format!("{title} ADD"),
                samples: self.spread(&["host-local"], &idx, adds),
            };
            let d = Row {
                key: format!("scale.del.{l}"),
                title: format!("{title} DEL"),
                samples: self.spread(&["host-local"], &idx, dels),
            };
            progress(&a);
            progress(&d);
            rows.push(a);
            rows.push(d);
        }
        if max > 0 {
            let (mut a, mut d) = self.add_del_rows(
                "scale.bridge",
                &format!("bridge + host-local, {} leases", thousands(max)),
                "bridge",
                &["bridge", "host-local"],
                "scale",
                &|s| conf(s, max),
                1,
                self.opts.scale_bridge_cycles,
                Vec::new(),
            )?;
            a.key = format!("scale.bridge.add.{max}");
            d.key = format!("scale.bridge.del.{max}");
            rows.push(a);
            rows.push(d);
        }
        // The prefill is in the layout both plugins read: each must release a prefilled lease by
        // its container id (and leave its neighbour alone).
        let mut ok = Vec::new();
        for s in 0..self.sets.len() {
            if max < 10 || !self.sets[s].has(&["host-local"]) {
                ok.push(None);
                continue;
            }
            let dir = self.sets[s].data.join(net(max));
            let ns = &self.sets[s].ctr["scale"];
            let del = self.call(s, "host-local", "DEL", Some(ns), "fill-7", &conf(s, max), false);
            let gone = !dir.join(Ipv4Addr::from(SCALE_BASE + 2 + 7).to_string()).exists();
            let kept = dir.join(Ipv4Addr::from(SCALE_BASE + 2 + 8).to_string()).exists();
            let good = del.is_ok() && gone && kept;
            if !good {
                eprintln!(
                    "  {}: a prefilled lease was not released by id: {del:?}",
                    self.sets[s].key
                );
            }
            ok.push(Some(good));
        }
        Ok((rows, ok))
    }

    fn part_trace(&self) -> Res<Trace> {
        let mut t = Trace::default();
        let s = 0;
        if !self.sets[s].has(&["bridge", "host-local"]) {
            t.skipped = Some("no bridge/host-local binary of ours".into());
            return Ok(t);
        }
        let conf = self.conf(
            s,
            "bench-br4",
            json!({"type": "bridge", "bridge": "cnibr0", "isGateway": true,
            "isDefaultGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.11.0.0/24"}]]}}),
        );
        let ns = &self.sets[s].ctr["br4"];
        let n = self.opts.trace_cycles;
        eprintln!("step breakdown: {n} bridge ADDs of ours with CNI_RS_TRACE=1, alternating with untraced ones");
        let mut per_call: Vec<(u64, Vec<TraceLine>)> = Vec::new();
        let version = br#"{"cniVersion":"1.0.0"}"#;
        for i in 0..self.opts.warmup + n {
            sys::check_stop()?;
            // In the same cycle: both process starts, an untraced ADD, a traced one.
            let vb = self.call(s, "bridge", "VERSION", None, "", version, false);
            let vh = self.call(s, "host-local", "VERSION", None, "", version, false);
            let plain = self.call(s, "bridge", "ADD", Some(ns), "bench-trace", &conf, false);
            let _ = self.call(s, "bridge", "DEL", Some(ns), "bench-trace", &conf, false);
            let add = self.call(s, "bridge", "ADD", Some(ns), "bench-trace", &conf, true);
            let _ = self.call(s, "bridge", "DEL", Some(ns), "bench-trace", &conf, false);
            if i >= self.opts.warmup {
                for (o, v) in [
                    (vb, &mut t.version_bridge_us),
                    (vh, &mut t.version_hl_us),
                    (plain, &mut t.plain_wall_us),
                ] {
                    if let Ok(o) = o {
                        v.push(o.wall.as_micros() as u64);
                    }
                }
            }
            let out = match add {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("  traced ADD failed: {e}");
                    continue;
                }
            };
            if i < self.opts.warmup {
                continue;
            }
            let mut steps = Vec::new();
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                let Some(rest) = line.strip_prefix("TRACE ") else {
                    continue;
                };
                let f: Vec<&str> = rest.split_whitespace().collect();
                // `<pid>`, or `<pid>-host-local` for host-local run in bridge's process.
                let (Some(pid), Some(us)) = (
                    f.first()
                        .filter(|p| p.split('-').next().is_some_and(|n| n.parse::<u32>().is_ok())),
                    f.last().and_then(|u| u.parse::<u64>().ok()),
                ) else {
                    t.unparsed += 1;
                    continue;
                };
                if f.len() < 3 {
                    t.unparsed += 1;
                    continue;
                }
                let proc_name = if *pid == out.pid.to_string() {
                    "bridge"
                } else {
                    "host-local"
                };
                if pid.ends_with("-host-local") {
                    t.in_process = true;
                }
                steps.push((proc_name.to_string(), f[1..f.len() - 1].join(" "), us));
            }
            per_call.push((out.wall.as_micros() as u64, steps));
        }
        // Steps in the order first seen; bridge steps first, host-local ones after "ipam ADD".
        let mut order: Vec<(String, String)> = Vec::new();
        for (_, steps) in &per_call {
            for (p, st, _) in steps {
                let k = (p.clone(), st.clone());
                if !order.contains(&k) {
                    order.push(k);
                }
            }
        }
        t.steps = order
            .iter()
            .map(|(p, st)| (p.clone(), st.clone(), Vec::new()))
            .collect();
        for (wall, steps) in &per_call {
            t.wall_us.push(*wall);
            for (i, (p, st)) in order.iter().enumerate() {
                let v: u64 = steps
                    .iter()
                    .filter(|(pp, ss, _)| pp == p && ss == st)
                    .map(|x| x.2)
                    .sum();
                t.steps[i].2.push(v);
            }
            let bridge_sum: u64 = steps.iter().filter(|x| x.0 == "bridge").map(|x| x.2).sum();
            let hl_sum: u64 = steps.iter().filter(|x| x.0 == "host-local").map(|x| x.2).sum();
            let ipam: u64 = steps
                .iter()
                .filter(|x| x.0 == "bridge" && x.1 == "ipam ADD")
                .map(|x| x.2)
                .sum();
            t.bridge_rest_us.push(wall.saturating_sub(bridge_sum));
            t.ipam_rest_us.push(ipam.saturating_sub(hl_sum));
        }
        if per_call.iter().all(|(_, s)| s.is_empty()) {
            t.skipped = Some("our bridge printed no TRACE lines (CNI_RS_TRACE=1 not supported by this build?)".into());
        }
        Ok(t)
    }
}

fn failure(set: &str, plugin: &str, cmd: &str, out: &Out) -> String {
    format!(
        "{set}/{plugin} {cmd} failed ({}): {} {}",
        out.status,
        trim(&out.stdout, 300),
        trim(&out.stderr, 300)
    )
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn progress(r: &Row) {
    let mut parts = Vec::new();
    for (i, s) in r.samples.iter().enumerate() {
        let who = SET_KEYS.get(i).copied().unwrap_or("floor");
        match (&s.skipped, s.median()) {
            (Some(why), _) => parts.push(format!("{who}: skipped ({why})")),
            (None, Some(m)) => parts.push(format!(
                "{who} {:.2} ms (p90 {:.2}){}",
                m / 1000.0,
                s.p90().unwrap_or(0.0) / 1000.0,
                if s.failures > 0 {
                    format!(", {} FAILED", s.failures)
                } else {
                    String::new()
                }
            )),
            (None, None) => parts.push(format!("{who}: no sample ({} failed)", s.failures)),
        }
    }
    if let (Some(o), Some(f)) = (
        r.samples.first().and_then(|s| s.median()),
        r.samples.get(1).and_then(|s| s.median()),
    ) {
        parts.push(format!("reference/ours {:.1}×", f / o));
    }
    eprintln!("  {}: {}", r.title, parts.join(", "));
}

/// Whether `bin` is our multicall program: run under the name `host-local` with no
/// `CNI_COMMAND`, it says it is host-local.
fn is_multicall(bin: &Path) -> bool {
    use std::os::unix::process::CommandExt;
    Command::new(bin)
        .arg0("host-local")
        .env_clear()
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stderr).starts_with("CNI host-local plugin"))
}

/// Copies the plugins of `src` to `dst`; `as_installed`: when `src/bridge` is our multicall
/// program, as `make install` installs it (one file, hard links under the three names).
fn copy_plugins(src: &Path, dst: &Path, as_installed: bool) -> Res<Vec<String>> {
    fs::create_dir_all(dst).map_err(|e| format!("creating {}: {e}", dst.display()))?;
    let mut missing = Vec::new();
    let first = src.join(PLUGINS[0]);
    if as_installed && first.is_file() && is_multicall(&first) {
        let to = dst.join(PLUGINS[0]);
        fs::copy(&first, &to).map_err(|e| format!("copying {}: {e}", first.display()))?;
        for p in &PLUGINS[1..] {
            fs::hard_link(&to, dst.join(p)).map_err(|e| format!("linking {p}: {e}"))?;
        }
        eprintln!(
            "note: {} is the multicall program: installed once under the three names",
            first.display()
        );
        return Ok(missing);
    }
    for p in PLUGINS {
        let from = src.join(p);
        if from.is_file() {
            fs::copy(&from, dst.join(p)).map_err(|e| format!("copying {}: {e}", from.display()))?;
        } else {
            missing.push(p.to_string());
        }
    }
    Ok(missing)
}

fn machine(opts: &Opts, load_start: String) -> Machine {
    let commit = sys::cmd_output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        sys::cmd_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    let ref_version = sys::cmd_output("dpkg-query", &["-W", "-f", "${Version}", "containernetworking-plugins"])
        .map(|v| format!("containernetworking-plugins {v} (Debian)"))
        .unwrap_or_else(|| "unknown (not a Debian package)".into());
    Machine {
        cpu: sys::cpu_model(),
        cores: sys::ncpus(),
        mem_mib: sys::mem_total_mib(),
        kernel: sys::kernel(),
        os,
        rustc: sys::cmd_output("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
        commit: if dirty {
            format!("{commit} (with uncommitted changes in the work tree)")
        } else {
            commit
        },
        ref_version,
        iproute2: sys::cmd_output("ip", &["-V"]).unwrap_or_default(),
        data_fs: sys::fs_type(&opts.tmp),
        load_start,
        load_end: sys::loadavg(),
        command: command_line(),
        date: sys::cmd_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
    }
}

/// The command as the user typed it, with the settings that changed what ran.
fn command_line() -> String {
    let mut env: Vec<String> = std::env::vars()
        .filter(|(k, _)| k == "QUICK" || k.starts_with("BENCH_") && k != "BENCH_VIA")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = if std::env::var_os("MAKELEVEL").is_some() && args.is_empty() {
        "make bench".to_string()
    } else if let Ok(via) = std::env::var("BENCH_VIA") {
        std::iter::once(via).chain(args).collect::<Vec<_>>().join(" ")
    } else {
        std::env::args().collect::<Vec<_>>().join(" ")
    };
    env.push(cmd);
    env.join(" ")
}

pub fn run(opts: &Opts) -> Res<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("must run as root: it creates network namespaces".into());
    }
    if sys::cmd_output("ip", &["-V"]).is_none() {
        return Err("`ip` (iproute2) not found; `make deps` installs it".into());
    }
    let started = Instant::now();
    let load_start = sys::loadavg();
    sys::remember_root_ns()?;
    let stale = sys::remove_stale(&opts.tmp);
    if stale > 0 {
        eprintln!("removed {stale} namespaces/directories left by an earlier run that was killed");
    }
    let tag = format!("{}{}", sys::PREFIX, std::process::id());
    let tmp = opts.tmp.join(&tag);
    sys::register_dir(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;

    // Namespaces: per set a host and one container per sequential row and per concurrent ADD.
    let k = opts.conc;
    let mut names = Vec::new();
    for key in SET_KEYS {
        let p = &key[..1];
        names.push(format!("{tag}-{p}-host"));
        for c in CTRS {
            names.push(format!("{tag}-{p}-{c}"));
        }
        for i in 0..k {
            names.push(format!("{tag}-{p}-conc{i}"));
        }
    }
    names.push(format!("{tag}-floor-host"));
    names.push(format!("{tag}-floor-c"));
    let mut nss = Ns::create_many(&names)?.into_iter();
    let mut sets = Vec::new();
    for (key, src) in SET_KEYS.iter().zip([&opts.ours, &opts.reference]) {
        let bin = tmp.join(format!("bin-{key}"));
        // BENCH_REFERENCE_AS_INSTALLED=1: a multicall build given as the reference (an A/B of
        // two builds of ours) is installed as ours is.
        let as_installed = *key != "reference" || std::env::var("BENCH_REFERENCE_AS_INSTALLED").is_ok_and(|v| v == "1");
        let missing = copy_plugins(src, &bin, as_installed)?;
        if *key == "reference" && !missing.is_empty() {
            return Err(format!(
                "reference plugins {missing:?} not found in {} (apt-get install containernetworking-plugins, or --reference DIR)",
                src.display()
            ));
        }
        if missing.len() == PLUGINS.len() {
            return Err(format!(
                "none of our plugins found in {} (cargo build --release --workspace)",
                src.display()
            ));
        }
        if !missing.is_empty() {
            eprintln!(
                "note: {key} has no {missing:?} in {}: those rows are skipped for it",
                src.display()
            );
        }
        let data = tmp.join(format!("data-{key}"));
        fs::create_dir_all(&data).map_err(|e| format!("creating {}: {e}", data.display()))?;
        let host = nss.next().ok_or("namespace list too short")?;
        let mut ctr = BTreeMap::new();
        for c in CTRS {
            ctr.insert(c, nss.next().ok_or("namespace list too short")?);
        }
        let conc: Vec<Ns> = (0..k)
            .map(|_| nss.next().ok_or_else(|| "namespace list too short".to_string()))
            .collect::<Res<_>>()?;
        // The macvlan master: one end of a veth pair inside the private host namespace.
        host.enter()?;
        sys::ip_batch(
            "link set lo up\nlink add cnibmv0 type veth peer name cnibmv0p\nlink set cnibmv0 up\nlink set cnibmv0p up\n",
        )?;
        sets.push(Set {
            key,
            src: src.clone(),
            bin,
            missing,
            host,
            data,
            ctr,
            conc,
        });
    }
    let floor_host = nss.next().ok_or("namespace list too short")?;
    let floor_ctr = nss.next().ok_or("namespace list too short")?;
    floor_host.enter()?;
    sys::ip_batch(
        "link set lo up\nlink add cnibrf type bridge\naddr add 10.40.0.1/24 dev cnibrf\nlink set cnibrf up\n",
    )?;
    sys::enter_root()?;

    let exit_floor = if cfg!(target_arch = "x86_64") {
        let p = tmp.join("exit-only");
        fs::write(&p, exit_only_elf()).map_err(|e| format!("writing {}: {e}", p.display()))?;
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", p.display()))?;
        Some(p)
    } else {
        None
    };
    let (exit_libc, exit_rust) = build_exit_programs(&tmp);
    let mut b = Bench {
        opts,
        sets,
        floor_host,
        floor_ctr,
        exit_floor,
        exit_libc,
        exit_rust,
        notes: Vec::new(),
    };
    let mut rows = Vec::new();
    let mut conc = Vec::new();
    let mut trace = Trace {
        skipped: Some("not run".into()),
        ..Default::default()
    };
    let mut prefill_ok = Vec::new();
    if opts.runs("version") {
        rows.extend(b.part_version()?);
    }
    if opts.runs("host-local") {
        rows.extend(b.part_host_local()?);
    }
    if opts.runs("bridge") {
        rows.extend(b.part_bridge()?);
    }
    // Right after the bridge rows, so that the breakdown runs under the same conditions.
    if opts.runs("trace") {
        trace = b.part_trace()?;
    }
    if opts.runs("macvlan") {
        rows.extend(b.part_macvlan()?);
    }
    if opts.runs("bigconf") {
        rows.extend(b.part_bigconf()?);
    }
    if opts.runs("conc") {
        conc = b.part_conc()?;
    }
    if opts.runs("scale") {
        let (r, ok) = b.part_scale()?;
        rows.extend(r);
        prefill_ok = ok;
    }
    if opts.runs("cnitool") {
        rows.extend(b.part_cnitool()?);
    }
    sys::enter_root()?;
    if opts.quick {
        b.notes
            .push("QUICK run: few cycles, small lease counts; a smoke test, not figures to quote.".into());
    }
    let steps = if opts.runs("version") {
        b.single_step()
    } else {
        Vec::new()
    };
    let results = Results {
        opts: opts.clone(),
        machine: machine(opts, load_start),
        sets: b
            .sets
            .iter()
            .map(|s| (s.key.to_string(), s.src.display().to_string(), s.missing.clone()))
            .collect(),
        rows,
        conc,
        trace,
        prefill_ok,
        seconds: started.elapsed().as_secs_f64(),
        notes: b.notes,
        cpuid_us: cpuid_cost_us(),
        steps,
    };
    crate::report::write(&results)
}
