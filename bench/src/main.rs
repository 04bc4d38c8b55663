//! `cni-bench`: our bridge, macvlan and host-local against the reference plugins, side by side
//! in one run, everything inside private network namespaces; writes BENCHMARKS.md and a chart.
//!
//! ```text
//! cni-bench [--quick] [--cycles N] [--ours DIR] [--reference DIR] [--out DIR] [--only LIST]
//! ```
//! Environment: QUICK=1, BENCH_CYCLES, BENCH_WARMUP, BENCH_CONC, BENCH_CONC_ROUNDS,
//! BENCH_LEASES (comma separated), BENCH_SCALE_CYCLES, BENCH_SCALE_BRIDGE_CYCLES, BENCH_TRACE_CYCLES,
//! BENCH_BIGCONF_CYCLES, BENCH_ONLY,
//! BENCH_OURS, BENCH_REFERENCE, BENCH_OUT, BENCH_TMPDIR. See BENCHMARKS.md for what is measured.

mod bench;
mod report;
mod stats;
mod svg;
mod sys;

use std::path::PathBuf;

use sys::Res;

/// The parts of a run, in the order they run (`--only` takes a comma-separated subset).
pub const PARTS: &[&str] = &[
    "version",
    "host-local",
    "bridge",
    "trace",
    "macvlan",
    "bigconf",
    "conc",
    "scale",
    "cnitool",
];

#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    pub cycles: usize,
    pub warmup: usize,
    pub conc: usize,
    pub conc_rounds: usize,
    pub leases: Vec<usize>,
    pub scale_cycles: usize,
    pub scale_bridge_cycles: usize,
    pub trace_cycles: usize,
    pub bigconf_cycles: usize,
    pub ours: PathBuf,
    pub reference: PathBuf,
    pub out: PathBuf,
    pub only: Vec<String>,
    pub tmp: PathBuf,
}

impl Opts {
    pub fn runs(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}

fn env_usize(k: &str) -> Res<Option<usize>> {
    match std::env::var(k) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map(Some).map_err(|_| format!("{k}={v}: not a number")),
        _ => Ok(None),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: cni-bench [--quick] [--cycles N] [--ours DIR] [--reference DIR] [--out DIR] [--only {}]\n\
         env: QUICK=1 BENCH_CYCLES BENCH_WARMUP BENCH_CONC BENCH_CONC_ROUNDS BENCH_LEASES=0,1000,... \
         BENCH_SCALE_CYCLES BENCH_TRACE_CYCLES BENCH_BIGCONF_CYCLES BENCH_ONLY BENCH_OURS BENCH_REFERENCE BENCH_OUT BENCH_TMPDIR",
        PARTS.join(",")
    );
    std::process::exit(2)
}

fn parse_opts() -> Res<Opts> {
    let mut args = std::env::args().skip(1);
    let mut quick = std::env::var("QUICK").is_ok_and(|v| v == "1");
    let mut cycles = env_usize("BENCH_CYCLES")?;
    let mut ours = std::env::var("BENCH_OURS").ok().map(PathBuf::from);
    let mut reference = std::env::var("BENCH_REFERENCE").ok().map(PathBuf::from);
    let mut out = std::env::var("BENCH_OUT").ok().map(PathBuf::from);
    let mut only = std::env::var("BENCH_ONLY").ok().filter(|s| !s.is_empty());
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--quick" => quick = true,
            "--cycles" => cycles = Some(val().parse().map_err(|_| "--cycles: not a number")?),
            "--ours" => ours = Some(val().into()),
            "--reference" => reference = Some(val().into()),
            "--out" => out = Some(val().into()),
            "--only" => only = Some(val()),
            _ => usage(),
        }
    }
    let cycles = cycles.unwrap_or(if quick { 5 } else { 50 }).max(1);
    let leases = match std::env::var("BENCH_LEASES") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("BENCH_LEASES: bad number {s:?}"))
            })
            .collect::<Res<Vec<_>>>()?,
        _ if quick => vec![0, 1000],
        _ => vec![0, 1000, 10_000, 50_000],
    };
    if leases.iter().any(|&l| l > 60_000) {
        return Err("BENCH_LEASES: at most 60000 leases fit the /16 of the scale rows".into());
    }
    let only: Vec<String> = match only {
        Some(s) => {
            let v: Vec<String> = s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            if let Some(bad) = v.iter().find(|p| !PARTS.contains(&p.as_str())) {
                return Err(format!("unknown part {bad:?} (parts: {})", PARTS.join(",")));
            }
            v
        }
        None => PARTS.iter().map(|s| s.to_string()).collect(),
    };
    Ok(Opts {
        quick,
        cycles,
        warmup: env_usize("BENCH_WARMUP")?.unwrap_or(if quick { 1 } else { 3 }),
        conc: env_usize("BENCH_CONC")?.unwrap_or(64).clamp(2, 250),
        conc_rounds: env_usize("BENCH_CONC_ROUNDS")?
            .unwrap_or(if quick { 1 } else { 5 })
            .max(1),
        leases,
        scale_cycles: env_usize("BENCH_SCALE_CYCLES")?.unwrap_or(cycles).max(1),
        scale_bridge_cycles: env_usize("BENCH_SCALE_BRIDGE_CYCLES")?.unwrap_or(cycles.min(20)).max(1),
        trace_cycles: env_usize("BENCH_TRACE_CYCLES")?.unwrap_or(cycles).max(1),
        bigconf_cycles: env_usize("BENCH_BIGCONF_CYCLES")?.unwrap_or(cycles.min(10)).max(1),
        ours: ours.unwrap_or_else(|| "target/release".into()),
        reference: reference.unwrap_or_else(|| "/usr/lib/cni".into()),
        out: out.unwrap_or_else(|| if quick { "target/bench-quick".into() } else { ".".into() }),
        only,
        tmp: std::env::var("BENCH_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir()),
    })
}

fn main() {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cni-bench: {e}");
            std::process::exit(2);
        }
    };
    sys::install_signal_handlers();
    let code = {
        let _guard = sys::CleanupGuard;
        match bench::run(&opts) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cni-bench: {e}");
                if sys::stop_signal().is_some() {
                    130
                } else {
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
