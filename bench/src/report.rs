//! BENCHMARKS.md, the chart and the raw numbers (JSON) from one run.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::bench::{thousands, ConcSet, Results, Row};
use crate::stats::{quantile, Samples};
use crate::svg::{scale_chart, Series};
use crate::sys::Res;

const CHART: &str = "docs/bench-scale.svg";

fn ms(us: f64) -> String {
    let m = us / 1000.0;
    if m < 10.0 {
        format!("{m:.2} ms")
    } else if m < 100.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.0} ms")
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(ms).unwrap_or_else(|| "–".into())
}

fn ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.1}×")
    }
}

/// "3.10 ms" or the reason there is no number.
/// One row of a floor table: the floor `f`, ours (sample 0) and the reference (sample 1), each
/// with its median over the floor's as `quotient` prints it.
fn floor_row(out: &mut String, title: &str, row: &Row, f: &Samples, quotient: fn(f64) -> String) {
    let q = |s: &Samples| match (s.median(), f.median()) {
        (Some(x), Some(y)) => quotient(x / y),
        _ => "–".into(),
    };
    let _ = writeln!(
        out,
        "| {title} | {} | {} | {} | {} | {} | {} |",
        cell(f, Samples::median),
        cell(f, Samples::p90),
        cell(&row.samples[0], Samples::median),
        q(&row.samples[0]),
        cell(&row.samples[1], Samples::median),
        q(&row.samples[1]),
    );
}

fn cell(s: &Samples, f: fn(&Samples) -> Option<f64>) -> String {
    if let Some(why) = &s.skipped {
        return format!("n/a ({why})");
    }
    match f(s) {
        Some(v) => ms(v),
        None => format!("failed ({}×)", s.failures),
    }
}

fn ref_over_ours(r: &Row) -> Option<f64> {
    Some(r.samples.get(1)?.median()? / r.samples.first()?.median()?)
}

fn failures_note(r: &Row, names: &[&str], notes: &mut Vec<String>) {
    for (i, s) in r.samples.iter().enumerate() {
        if s.failures > 0 {
            notes.push(format!(
                "{} / {}: {} failed call(s); first: `{}`",
                r.title,
                names.get(i).copied().unwrap_or("floor"),
                s.failures,
                s.first_error
                    .as_deref()
                    .unwrap_or("?")
                    .replace('`', "'")
                    .replace('\n', " ")
            ));
        }
    }
}

struct Target {
    what: String,
    measured: String,
    met: Option<bool>,
}

/// For a row with the `ip` floor (sample 2) and that floor's own process starts (sample 3):
/// the kernel work (floor − starts), and what ours spends beyond it, next to our process start.
fn kernel_work(r: &Results, row: &Row) -> String {
    let (Some(o), Some(f), Some(st)) = (
        row.samples[0].median(),
        row.samples.get(2).and_then(Samples::median),
        row.samples.get(3).and_then(Samples::median),
    ) else {
        return String::new();
    };
    let start = r.row("version.bridge").and_then(|v| v.samples[0].median());
    format!(
        "; the kernel work alone (the floor without its `ip` process starts, {}) is {}: ours spends {} beyond it{}",
        opt_ms(Some(st)),
        opt_ms(Some(f - st)),
        opt_ms(Some(o - (f - st))),
        start
            .map(|s| format!(", of which its process start (VERSION) is {}", opt_ms(Some(s))))
            .unwrap_or_default()
    )
}

fn targets(r: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    for (key, what) in [
        ("br4.add", "bridge + host-local ADD (IPv4)"),
        ("br6.add", "bridge + host-local ADD (dual stack)"),
        ("mv.add", "macvlan + host-local ADD"),
    ] {
        let row = r.row(key);
        let q = row.and_then(ref_over_ours);
        // What the kernel work alone allows: the reference over the floor.
        let bound = row.and_then(|row| Some(row.samples.get(1)?.median()? / row.samples.get(2)?.median()?));
        t.push(Target {
            what: format!("{what} ≥ 5× faster than the reference, median vs median"),
            measured: match (row, q) {
                (Some(row), Some(q)) => format!(
                    "{} vs {}: {}{}{}",
                    opt_ms(row.samples[0].median()),
                    opt_ms(row.samples[1].median()),
                    ratio(q),
                    bound
                        .map(|b| format!(
                            "; the `ip` floor is {}, reference / floor {}",
                            opt_ms(row.samples[2].median()),
                            ratio(b)
                        ))
                        .unwrap_or_default(),
                    kernel_work(r, row)
                ),
                _ => "not measured".into(),
            },
            met: q.map(|q| q >= 5.0),
        });
    }
    // A config of 3.9 MiB: decoding it must not cost more than the reference's.
    for (key, what) in [
        ("big.hl.add", "host-local ADD"),
        ("big.br.add", "bridge + host-local ADD"),
    ] {
        let row = r.row(key);
        let q = row.and_then(ref_over_ours);
        t.push(Target {
            what: format!(
                "{what} with a config of 3.9 MiB ({} keys) within 2× of the reference, median vs median",
                thousands(crate::bench::BIG_KEYS)
            ),
            measured: match (row, q) {
                (Some(row), Some(q)) => format!(
                    "{} vs {}: ours / reference {:.2}×",
                    opt_ms(row.samples[0].median()),
                    opt_ms(row.samples[1].median()),
                    1.0 / q
                ),
                _ => "not measured".into(),
            },
            met: q.map(|q| q >= 0.5),
        });
    }
    // DEL against the `ip link del` of the same link, in the same cycles.
    if let Some(row) = r.row("br4.del") {
        let o = row.samples[0].median();
        let f = row.samples.get(2).and_then(Samples::median);
        let q = o.zip(f).map(|(o, f)| o / f);
        t.push(Target {
            what: "bridge + host-local DEL (IPv4) within 1.1× of the `ip link del` floor, median vs median".into(),
            measured: match q {
                Some(q) => format!(
                    "{} vs {}: {:.2}× (reference {}){}",
                    opt_ms(o),
                    opt_ms(f),
                    q,
                    opt_ms(row.samples[1].median()),
                    kernel_work(r, row)
                ),
                None => "not measured".into(),
            },
            met: q.map(|q| q <= 1.1),
        });
    }
    // Process start against the exit-only program, in the same cycles.
    let starts: Vec<(String, f64, f64)> = ["bridge", "macvlan", "host-local"]
        .iter()
        .filter_map(|p| {
            let row = r.row(&format!("version.{p}"))?;
            Some((p.to_string(), row.samples[0].median()?, row.samples.get(2)?.median()?))
        })
        .collect();
    if !starts.is_empty() {
        let worst = starts.iter().map(|(_, o, f)| o / f).fold(0.0, f64::max);
        // The same against the exit-only programs of glibc and of Rust (what the C library's and
        // Rust's own start-up cost), for the breakdown.
        let against = |i: usize| -> Option<String> {
            let row = r.row("version.bridge")?;
            let (o, f) = (row.samples[0].median()?, row.samples.get(i)?.median()?);
            Some(format!("{:.2}×", o / f))
        };
        let breakdown = match (against(3), against(4)) {
            (Some(c), Some(rs)) => format!(
                "; bridge against a program that only exits built as ours, C with glibc static {c}, Rust static non-PIE {rs} ([breakdown](#the-floor-of-a-process-start))"
            ),
            _ => String::new(),
        };
        t.push(Target {
            what: "process start (VERSION) within 1.5× of a minimal static program that only exits".into(),
            measured: starts
                .iter()
                .map(|(p, o, f)| format!("{p} {} vs {}: {:.2}×", opt_ms(Some(*o)), opt_ms(Some(*f)), o / f))
                .collect::<Vec<_>>()
                .join("; ")
                + &breakdown,
            met: Some(worst <= 1.5),
        });
    }
    let mut levels = r.opts.leases.clone();
    levels.sort_unstable();
    let max = levels.last().copied().unwrap_or(0);
    for op in ["add", "del"] {
        let empty = r.row(&format!("scale.{op}.0")).and_then(|x| x.samples[0].median());
        let full = r.row(&format!("scale.{op}.{max}")).and_then(|x| x.samples[0].median());
        let q = match (empty, full) {
            (Some(e), Some(f)) if max > 0 => Some(f / e),
            _ => None,
        };
        let at = if max == 50_000 {
            String::new()
        } else {
            format!(" (this run's largest store: {} leases)", thousands(max))
        };
        t.push(Target {
            what: format!(
                "our host-local {} at 50,000 leases within 1.3× of the empty store{at}",
                op.to_uppercase()
            ),
            measured: match q {
                Some(q) => format!("{} vs {}: {q:.2}×", opt_ms(full), opt_ms(empty)),
                None => "not measured".into(),
            },
            met: q.map(|q| q <= 1.3),
        });
    }
    let (o, f) = (r.conc.first(), r.conc.get(1));
    let med = |c: Option<&ConcSet>| {
        c.filter(|c| c.skipped.is_none())
            .and_then(|c| quantile(&c.add_wall_us, 0.5))
    };
    let q = match (med(o), med(f)) {
        (Some(a), Some(b)) => Some(b / a),
        _ => None,
    };
    t.push(Target {
        what: format!(
            "{} concurrent ADDs: wall time ≥ 4× lower than the reference",
            r.opts.conc
        ),
        measured: match q {
            Some(q) => format!("{} vs {}: {}", opt_ms(med(o)), opt_ms(med(f)), ratio(q)),
            None => "not measured".into(),
        },
        met: q.map(|q| q >= 4.0),
    });
    let clean = o.filter(|c| c.skipped.is_none() && c.adds + c.add_failures > 0);
    t.push(Target {
        what: format!(
            "{} concurrent ADDs and DELs: zero failures, zero duplicate addresses (ours)",
            r.opts.conc
        ),
        measured: match clean {
            Some(c) => format!(
                "{} ADDs: {} failed, {} duplicates; {} DELs failed; {} leases left",
                c.adds + c.add_failures,
                c.add_failures,
                c.duplicates,
                c.del_failures,
                c.leases_left
            ),
            None => "not measured".into(),
        },
        met: clean.map(|c| c.add_failures == 0 && c.duplicates == 0 && c.del_failures == 0 && c.leases_left == 0),
    });
    if let Some((what, measured, met)) = crate::bench::cnitool::target(r) {
        t.push(Target { what, measured, met });
    }
    t
}

fn latency_table(out: &mut String, rows: &[&Row]) {
    out.push_str(
        "| operation | ours median | ours p90 | reference median | reference p90 | reference / ours | CPU ours | CPU reference |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let (o, f) = (&r.samples[0], &r.samples[1]);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.title,
            cell(o, Samples::median),
            cell(o, Samples::p90),
            cell(f, Samples::median),
            cell(f, Samples::p90),
            ref_over_ours(r)
                .map(|q| format!("**{}**", ratio(q)))
                .unwrap_or_else(|| "–".into()),
            opt_ms(o.cpu_median()),
            opt_ms(f.cpu_median()),
        );
    }
}

fn chart(r: &Results, levels: &[usize]) -> Option<String> {
    let mut series = Vec::new();
    for (set, name, color) in [(0, "ours", "#d95f02"), (1, "reference", "#1b6ac9")] {
        for (op, dashed) in [("add", false), ("del", true)] {
            let pts: Vec<(f64, f64)> = levels
                .iter()
                .filter_map(|&l| {
                    let m = r.row(&format!("scale.{op}.{l}"))?.samples.get(set)?.median()?;
                    Some((l as f64, m / 1000.0))
                })
                .collect();
            if !pts.is_empty() {
                series.push(Series {
                    label: format!("{name} {}", op.to_uppercase()),
                    color,
                    dashed,
                    points: pts,
                });
            }
        }
    }
    if series.is_empty() {
        return None;
    }
    Some(scale_chart(
        "host-local ADD and DEL, median time against the number of leases in the store",
        &series,
        "ours",
    ))
}

pub fn write(r: &Results) -> Res<()> {
    let names = ["ours", "reference"];
    let mut out = String::new();
    let mut notes = r.notes.clone();
    let m = &r.machine;
    let _ = writeln!(out, "# Benchmarks: our plugins against the reference plugins\n");
    let _ = writeln!(
        out,
        "Written by `cni-bench` (the `bench/` crate), run by `make bench`; do not edit by hand, run it again.\n\n\
         - Command: `{}` ({:.0} s)\n\
         - Date: {}\n\
         - Machine: {}, {} cores, {} MiB RAM; kernel {}; {}; load average (1, 5, 15 min) {} at the start, {} at the end\n\
         - Ours: commit {}, built with {}, binaries from `{}`\n\
         - Reference: {}, binaries from `{}`\n\
         - Lease stores and plugin copies on {} (`{}`); {}\n\
         - Cycles: {} per row after {} warm-up (lease-count rows: {}, their bridge row: {}; step breakdown: {}); concurrency: {} ADDs at once, {} rounds after a warm-up round\n",
        m.command,
        r.seconds,
        m.date,
        m.cpu,
        m.cores,
        m.mem_mib,
        m.kernel,
        m.os,
        m.load_start,
        m.load_end,
        m.commit,
        m.rustc,
        r.sets[0].1,
        m.ref_version,
        r.sets[1].1,
        m.data_fs,
        r.opts.tmp.display(),
        m.iproute2,
        r.opts.cycles,
        r.opts.warmup,
        r.opts.scale_cycles,
        r.opts.scale_bridge_cycles,
        r.opts.trace_cycles,
        r.opts.conc,
        r.opts.conc_rounds,
    );
    for (k, src, missing) in &r.sets {
        if !missing.is_empty() {
            let _ = writeln!(
                out,
                "**{k}: {missing:?} missing in `{src}`: those rows are not measured for {k}.**\n"
            );
        }
    }

    // Targets.
    out.push_str("## Targets\n\nMeasured in this run, never asserted by a test.\n\n| target | measured (ours vs reference) | status |\n|---|---|---|\n");
    for t in targets(r) {
        let status = match t.met {
            Some(true) => "**met**",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | {status} |", t.what, t.measured);
    }
    out.push('\n');

    // Latency.
    let main: Vec<&Row> = [
        "version.bridge",
        "version.macvlan",
        "version.host-local",
        "hl.add",
        "hl.del",
        "br4.add",
        "br4.del",
        "br6.add",
        "br6.del",
        "mv.add",
        "mv.del",
    ]
    .iter()
    .filter_map(|k| r.row(k))
    .collect();
    if !main.is_empty() {
        out.push_str(
            "## One call at a time\n\n\
             Wall time of one plugin call as a runtime makes it: from spawning the plugin (config on stdin, \
             `CNI_*` in the environment) to reaping it, its IPAM child included. CPU is user + system time \
             of the call's whole process tree (median).\n\n",
        );
        latency_table(&mut out, &main);
        out.push('\n');
        for row in &main {
            failures_note(row, &names, &mut notes);
        }
    }

    // The floor of a process start.
    let versions: Vec<&Row> = ["bridge", "macvlan", "host-local"]
        .iter()
        .filter_map(|p| r.row(&format!("version.{p}")))
        .filter(|row| row.samples.len() > 2)
        .collect();
    if !versions.is_empty() {
        let cpuid = r.cpuid_us;
        let _ = write!(
            out,
            "### The floor of a process start\n\n\
             Three programs that only exit, spawned as the plugins are (same namespace, same environment and stdin) \
             in the same cycles as the VERSION rows, in alternation with them: **exit-only**, a complete static \
             program of 129 bytes that only calls `exit(0)` (one segment, no libc, no relocations: what a process \
             start costs at the least); **C**, `int main(void) {{ return 0; }}` linked statically with glibc \
             (`gcc -O2 -static`): the floor plus the C library's start-up; **Rust**, `fn main() {{}}` built as the \
             release build is (static glibc, non-PIE): plus Rust's standard start-up. Ours over Rust is what our \
             program adds (its size, its own start-up).\n\n"
        );
        if let (Some(cpu), Some(row)) = (cpuid, versions.first()) {
            if let (Some(f), Some(c)) = (
                row.samples.get(2).and_then(Samples::median),
                row.samples.get(3).and_then(Samples::median),
            ) {
                // The C program's cpuids, counted by single-stepping it.
                let counted = r.steps.iter().find(|(p, _, _)| p.starts_with("C,")).map(|s| s.2);
                let share = match counted {
                    Some(k) => format!(
                        "it executes {k} of them (counted below): {k} × {cpu:.1} µs = {} of the C program's {} over the \
                         exit-only program; the rest is its other start-up work (page faults of its image, TLS, a dozen \
                         system calls)",
                        opt_ms(Some(k as f64 * cpu)),
                        opt_ms(Some(c - f))
                    ),
                    None => format!(
                        "the C program's {} over the exit-only program is the time of about {:.0} of them",
                        opt_ms(Some(c - f)),
                        (c - f) / cpu
                    ),
                };
                let _ = write!(
                    out,
                    "On this machine one `cpuid` instruction costs {cpu:.1} µs (measured in the benchmark's own \
                     process: on a virtual machine each one traps to the hypervisor). glibc's start-up runs it to \
                     learn the CPU's features and, in glibc 2.36, queries every cache level's size, associativity \
                     and line size one by one (leaves 2 and 4): {share}. Every program linked with glibc pays this \
                     at each start (dynamically linked ones in the loader); it is not ours to remove short of \
                     another C library.\n\n"
                );
            }
        }
        if !r.steps.is_empty() {
            out.push_str(
                "Each program run once more, one instruction at a time (ptrace single-step), counting its instructions \
                 and the `cpuid`s among them: the counts are the same on every run (they depend on the C library and the CPU, not on load).\n\n\
                 | program | instructions | `cpuid` |\n|---|--:|--:|\n",
            );
            for (p, n, c) in &r.steps {
                let _ = writeln!(out, "| {p} | {} | {c} |", thousands(*n as usize));
            }
            out.push('\n');
        }
        out.push_str(
            "| call | exit-only | C, glibc static | Rust, static non-PIE | ours | ours / exit-only | ours / C | ours / Rust | reference | reference / exit-only |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for row in &versions {
            let title = row.title.replace(" (process start)", "");
            let med = |i: usize| row.samples.get(i).and_then(Samples::median);
            let cellx = |i: usize| match row.samples.get(i) {
                Some(s) => cell(s, Samples::median),
                None => "–".into(),
            };
            let q = |a: usize, b: usize| match (med(a), med(b)) {
                (Some(x), Some(y)) => format!("{:.2}×", x / y),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {title} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cellx(2),
                cellx(3),
                cellx(4),
                cellx(0),
                q(0, 2),
                q(0, 3),
                q(0, 4),
                cellx(1),
                q(1, 2)
            );
        }
        out.push('\n');
    }

    // The floor.
    if let (Some(a), Some(d)) = (r.row("br4.add"), r.row("br4.del")) {
        if let (Some(fa), Some(fd)) = (a.samples.get(2), d.samples.get(2)) {
            out.push_str(
                "### The floor: the same kernel work done by `ip`\n\n\
                 One bridge ADD's link, address and route operations done by `ip -batch` (the bridge exists, with \
                 its gateway address): in the host namespace, the veth pair with its peer created in the container \
                 namespace and the host end attached to the bridge and up; in the container namespace, the address, \
                 link up, the default route and `lo` up. `ip` cannot switch namespaces inside a batch (only with \
                 `netns exec`, which also unshares a mount namespace and remounts /sys), so these are two `ip -batch` \
                 processes, each started directly in its namespace as the plugins are: as many process starts as \
                 bridge + host-local. The DEL is `ip link del eth0` in the container namespace. Run in the same \
                 cycles as the IPv4 rows above, in alternation with them. The floor has no IPAM, no sysctls, no \
                 result and no checks: it is roughly what the kernel work and two small process starts cost (a \
                 plugin that starts faster than `ip` can come in under it). In the same cycles the same `ip -batch` \
                 processes run with nothing to do (two for the ADD, one for the DEL): the floor without them is the \
                 kernel work alone.\n\n\
                 | operation | floor median | floor p90 | ours median | ours / floor | reference median | reference / floor | the floor's `ip` starts | kernel work (floor − starts) |\n\
                 |---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
            );
            for (row, f) in [(a, fa), (d, fd)] {
                let title = row.title.replace("bridge + host-local, IPv4", "bridge IPv4");
                let mut line = String::new();
                floor_row(&mut line, &title, row, f, ratio);
                let st = row.samples.get(3).and_then(Samples::median);
                let kw = f.median().zip(st).map(|(f, s)| f - s);
                let _ = writeln!(out, "{} {} | {} |", line.trim_end(), opt_ms(st), opt_ms(kw));
            }
            out.push('\n');
        }
    }

    // A large config.
    let big: Vec<&Row> = ["big.hl.add", "big.hl.del", "big.br.add", "big.br.del"]
        .iter()
        .filter_map(|k| r.row(k))
        .collect();
    if !big.is_empty() {
        let _ = writeln!(
            out,
            "## A config of 3.9 MiB\n\n\
             The host-local and the IPv4 bridge configs of the rows above (their own networks, bridges and \
             subnets), each with {} more keys in its top-level object, every one a string of 101 bytes that no \
             plugin knows (as a runtime's annotations could be): 3.9 MiB of valid JSON, under the plugins' 4 MiB \
             cap. What it adds to a call is the time to read and decode it (bridge and host-local each decode \
             it); {} cycles.\n",
            thousands(crate::bench::BIG_KEYS),
            r.opts.bigconf_cycles
        );
        latency_table(&mut out, &big);
        out.push('\n');
        for row in &big {
            failures_note(row, &names, &mut notes);
        }
    }
    crate::bench::cnitool::section(&mut out, r);

    // Concurrency.
    if r.conc.len() == 2 {
        let (o, f) = (&r.conc[0], &r.conc[1]);
        let _ = writeln!(
            out,
            "## {k} ADDs at once\n\n\
             {k} bridge + host-local ADDs on one network (one bridge, one /24, one lease store), each into its own \
             container namespace, all spawned at once; wall time from the first spawn to the last exit. Then the \
             {k} DELs the same way. A warm-up round (which also creates the bridge) comes first; the medians are \
             over {} rounds per set, alternating ours and reference. Every ADD's result is checked and its \
             addresses compared with the others of the round.\n\n\
             | | ours | reference | reference / ours |\n|---|--:|--:|--:|",
            r.opts.conc_rounds,
            k = r.opts.conc
        );
        let med = |c: &ConcSet, v: &Vec<u64>, q: f64| {
            if let Some(s) = &c.skipped {
                format!("n/a ({s})")
            } else {
                opt_ms(quantile(v, q))
            }
        };
        let rq = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("**{}**", ratio(b / a)),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| ADD wall, median | {} | {} | {} |",
            med(o, &o.add_wall_us, 0.5),
            med(f, &f.add_wall_us, 0.5),
            rq(quantile(&o.add_wall_us, 0.5), quantile(&f.add_wall_us, 0.5))
        );
        let _ = writeln!(
            out,
            "| ADD wall, slowest round | {} | {} | |",
            med(o, &o.add_wall_us, 1.0),
            med(f, &f.add_wall_us, 1.0)
        );
        let _ = writeln!(
            out,
            "| DEL wall, median | {} | {} | {} |",
            med(o, &o.del_wall_us, 0.5),
            med(f, &f.del_wall_us, 0.5),
            rq(quantile(&o.del_wall_us, 0.5), quantile(&f.del_wall_us, 0.5))
        );
        let _ = writeln!(
            out,
            "| ADD wall, warm-up round (creates the bridge) | {} | {} | |",
            opt_ms(o.cold_add_us.map(|v| v as f64)),
            opt_ms(f.cold_add_us.map(|v| v as f64))
        );
        let counts = |c: &ConcSet| {
            if c.skipped.is_some() {
                ["–".to_string(), "–".into(), "–".into(), "–".into()]
            } else {
                [
                    format!("{} / {}", c.add_failures, c.adds + c.add_failures),
                    c.duplicates.to_string(),
                    c.del_failures.to_string(),
                    c.leases_left.to_string(),
                ]
            }
        };
        let (co, cf) = (counts(o), counts(f));
        for (i, what) in [
            "failed ADDs (all rounds)",
            "duplicate addresses",
            "failed DELs",
            "leases left after the DELs",
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(out, "| {what} | {} | {} | |", co[i], cf[i]);
        }
        out.push('\n');
        for (c, n) in [(o, "ours"), (f, "reference")] {
            if let Some(e) = &c.first_error {
                notes.push(format!(
                    "concurrent calls / {n}: first failure: `{}`",
                    e.replace('`', "'").replace('\n', " ")
                ));
            }
        }
    }

    // Lease count.
    let mut levels = r.opts.leases.clone();
    levels.sort_unstable();
    levels.dedup();
    let scale_rows: Vec<&Row> = r.rows.iter().filter(|x| x.key.starts_with("scale.")).collect();
    if !scale_rows.is_empty() {
        let _ = writeln!(
            out,
            "## Cost against the number of leases\n\n\
             host-local ADD and DEL on a /16 whose store already holds N leases of other containers, written in \
             the reference layout (`<dataDir>/<net>/<ip>` containing `<id>\\r\\n<ifname>`, plus \
             `last_reserved_ip.0` pointing at the last of them). Each set has its own store. \"First ADD\" is the \
             first call after the prefill (in the warm-up, not in the medians): for ours it includes rebuilding \
             its lease index, which is what happens once when our host-local takes over a store the reference \
             wrote.\n\n![ADD and DEL time against lease count]({CHART})\n\n\
             | leases | ADD ours | ADD reference | reference / ours | DEL ours | DEL reference | reference / ours | first ADD ours | first ADD reference |\n\
             |--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
        for &l in &levels {
            let (Some(a), Some(d)) = (r.row(&format!("scale.add.{l}")), r.row(&format!("scale.del.{l}"))) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(l),
                cell(&a.samples[0], Samples::median),
                cell(&a.samples[1], Samples::median),
                ref_over_ours(a)
                    .map(|q| format!("**{}**", ratio(q)))
                    .unwrap_or_else(|| "–".into()),
                cell(&d.samples[0], Samples::median),
                cell(&d.samples[1], Samples::median),
                ref_over_ours(d)
                    .map(|q| format!("**{}**", ratio(q)))
                    .unwrap_or_else(|| "–".into()),
                opt_ms(a.samples[0].first_us.map(|v| v as f64)),
                opt_ms(a.samples[1].first_us.map(|v| v as f64)),
            );
        }
        out.push('\n');
        let bridge_rows: Vec<&Row> = r.rows.iter().filter(|x| x.key.starts_with("scale.bridge.")).collect();
        if !bridge_rows.is_empty() {
            let _ = writeln!(
                out,
                "The same store through bridge + host-local (container interface included; {} cycles):\n",
                r.opts.scale_bridge_cycles
            );
            latency_table(&mut out, &bridge_rows);
            out.push('\n');
        }
        if !r.prefill_ok.is_empty() {
            let s: Vec<String> = r
                .prefill_ok
                .iter()
                .zip(names)
                .map(|(ok, n)| {
                    format!(
                        "{n}: {}",
                        match ok {
                            Some(true) => "yes",
                            Some(false) => "**no**",
                            None => "not checked",
                        }
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "Prefill check — each host-local released a prefilled lease by its container id and left its \
                 neighbour alone: {}.\n",
                s.join(", ")
            );
        }
        for row in &scale_rows {
            failures_note(row, &names, &mut notes);
        }
    }

    // Memory.
    let mut levels_max = levels.last().copied().unwrap_or(0);
    if r.row(&format!("scale.add.{levels_max}")).is_none() {
        levels_max = 0;
    }
    let mem: Vec<(String, &Row)> = [
        ("version.bridge", "`bridge` VERSION".to_string()),
        ("hl.add", "host-local ADD".to_string()),
        (
            &format!("scale.add.{levels_max}")[..],
            format!("host-local ADD, {} leases", thousands(levels_max)),
        ),
        (
            "br4.add",
            "bridge + host-local ADD (the larger of the two processes)".to_string(),
        ),
        (
            "mv.add",
            "macvlan + host-local ADD (the larger of the two processes)".to_string(),
        ),
    ]
    .into_iter()
    .filter_map(|(k, t)| r.row(k).map(|row| (t, row)))
    .collect();
    if !mem.is_empty() {
        out.push_str(
            "## Peak memory\n\nPeak resident set size of one plugin call (`ru_maxrss` from `wait4` on the plugin: \
             the larger of the plugin and the IPAM child it waited for), median over the calls of the rows above.\n\n\
             | call | ours | reference | reference / ours |\n|---|--:|--:|--:|\n",
        );
        for (t, row) in mem {
            let o = row.samples[0].rss_median();
            let f = row.samples[1].rss_median();
            let mib = |v: Option<f64>| {
                v.map(|k| format!("{:.1} MiB", k / 1024.0))
                    .unwrap_or_else(|| "–".into())
            };
            let q = match (o, f) {
                (Some(o), Some(f)) if o > 0.0 => ratio(f / o),
                _ => "–".into(),
            };
            let _ = writeln!(out, "| {t} | {} | {} | {q} |", mib(o), mib(f));
        }
        out.push('\n');
    }

    // Breakdown.
    breakdown(&mut out, r);

    // Method.
    out.push_str(
        "## How it is measured\n\n\
         - Everything runs in private network namespaces made for the run (`cnib<pid>-*`): per plugin set a \
         \"host\" namespace in which the plugins run (the benchmark enters it with `setns` on the spawning thread, \
         so the child starts there), one container namespace per row and one per concurrent ADD. The machine's \
         own interfaces, routes and firewall are never touched (no `ipMasq`, no rules), no traffic is sent, and \
         the namespaces and temp files are removed at the end, on error and on Ctrl-C; a later run removes those \
         of a run that was killed.\n\
         - The two sets get the same configs (`cniVersion` 1.0.0, same bridge names, subnets and network names, \
         in their own host namespace), each with its own lease store. Both sets' binaries are copied to the same \
         temp directory first, so they load from the same file system and a concurrent `cargo build` cannot \
         swap ours mid-run. Ours are installed there as `make install` installs them: when our `bridge` is the \
         multicall program, one file under the three names (hard links), so bridge and macvlan run host-local \
         in-process; the reference's are three programs.\n\
         - Every row alternates: ours ADD + DEL, reference ADD + DEL, ours … (the floor joins the IPv4 bridge \
         cycles), so a noisy machine hurts both alike. Warm-up cycles (bridge creation, first loads) are not in \
         the medians. Medians and p90 (nearest rank) are of wall time from spawn to reap; every ADD's result JSON \
         is parsed and its addresses checked, every exit status checked; failures are counted, not timed.\n\
         - Configs: bridge `isGateway` + `isDefaultGateway`, `ipMasq: false`; macvlan `mode: bridge` on a veth \
         end inside the private host namespace; host-local alone gets the bridge config, as it does when \
         delegated to.\n\
         - Options: `BENCH_CYCLES` (default 50), `BENCH_WARMUP` (3), `BENCH_CONC` (64), `BENCH_CONC_ROUNDS` (5), \
         `BENCH_LEASES` (0,1000,10000,50000), `BENCH_SCALE_CYCLES` and `BENCH_TRACE_CYCLES` (default: the cycles), \
         `BENCH_SCALE_BRIDGE_CYCLES` (20), `BENCH_BIGCONF_CYCLES` (the cycles, at most 10), \
         `BENCH_ONLY` (a subset of version,host-local,bridge,macvlan,bigconf,conc,scale,trace,cnitool); `QUICK=1` (or \
         `cni-bench --quick`) is a smoke run that writes to `target/bench-quick/` instead of this file. Raw \
         samples of every run: `results.json` under `target/bench/` (or `target/bench-quick/`).\n\n",
    );

    if !notes.is_empty() {
        out.push_str("## Notes\n\n");
        for n in &notes {
            let _ = writeln!(out, "- {n}");
        }
        out.push('\n');
    }

    let dir = &r.opts.out;
    fs::create_dir_all(dir.join("docs")).map_err(|e| format!("creating {}: {e}", dir.join("docs").display()))?;
    let md = dir.join("BENCHMARKS.md");
    fs::write(&md, out).map_err(|e| format!("writing {}: {e}", md.display()))?;
    if let Some(svg) = chart(r, &levels) {
        let p = dir.join(CHART);
        fs::write(&p, svg).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    let json_dir = if r.opts.quick {
        dir.clone()
    } else {
        Path::new("target/bench").to_path_buf()
    };
    let _ = fs::create_dir_all(&json_dir);
    let jp = json_dir.join("results.json");
    fs::write(&jp, serde_json::to_string_pretty(&r.to_json()).unwrap_or_default())
        .map_err(|e| format!("writing {}: {e}", jp.display()))?;
    eprintln!(
        "wrote {}, {} and {}",
        md.display(),
        dir.join(CHART).display(),
        jp.display()
    );
    Ok(())
}

fn breakdown(out: &mut String, r: &Results) {
    let t = &r.trace;
    out.push_str("## Where the time of our bridge ADD goes\n\n");
    if let Some(why) = &t.skipped {
        let _ = writeln!(out, "Not measured: {why}.\n");
        return;
    }
    let n = t.wall_us.len();
    let wall = quantile(&t.wall_us, 0.5).unwrap_or(0.0);
    let _ = writeln!(
        out,
        "{n} IPv4 bridge + host-local ADDs of ours with `CNI_RS_TRACE=1`: each process prints \
         `TRACE <pid> <step> <µs since the previous mark>` on stderr, bridge's lines and those of its host-local \
         child (told apart by pid). Medians per step; a sum of medians is not the median of sums, so the \
         column does not add up exactly. \"Process start\" is the median VERSION call of the same binary, run in \
         the same cycles (exec, dynamic loading, runtime start, exit). Each cycle: VERSION of bridge and of \
         host-local, an ADD without tracing and its DEL, a traced ADD and its DEL.\n\n\
         | step | median | p90 | share of the median ADD |\n|---|--:|--:|--:|"
    );
    // host-local in bridge's process (the multicall program): no second process start.
    let vh = if t.in_process {
        None
    } else {
        quantile(&t.version_hl_us, 0.5)
    };
    let us = |v: f64| {
        if v >= 1000.0 {
            format!("{:.2} ms", v / 1000.0)
        } else {
            format!("{v:.0} µs")
        }
    };
    let share = |v: f64| {
        if wall > 0.0 {
            format!("{:.0} %", v / wall * 100.0)
        } else {
            "–".into()
        }
    };
    let line = |out: &mut String, name: &str, v: &[u64]| {
        let m = quantile(v, 0.5).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            us(m),
            us(quantile(v, 0.9).unwrap_or(0.0)),
            share(m)
        );
    };
    let _ = writeln!(
        out,
        "| **the whole ADD (wall)** | **{}** | {} | 100 % |",
        us(wall),
        us(quantile(&t.wall_us, 0.9).unwrap_or(0.0))
    );
    if let Some(plain) = quantile(&t.plain_wall_us, 0.5) {
        let _ = writeln!(
            out,
            "| (the same ADD without `CNI_RS_TRACE`, in the same cycles) | {} | {} | {} |",
            us(plain),
            us(quantile(&t.plain_wall_us, 0.9).unwrap_or(0.0)),
            share(plain)
        );
    }
    let vb = quantile(&t.version_bridge_us, 0.5);
    if let Some(v) = vb {
        let _ = writeln!(
            out,
            "| bridge: process start (VERSION, in the same cycles) | {} | | {} |",
            us(v),
            share(v)
        );
    }
    line(
        out,
        "bridge: untraced (wall − bridge's steps: process start, exit, code between marks)",
        &t.bridge_rest_us,
    );
    for (p, step, v) in t.steps.iter().filter(|s| s.0 == "bridge") {
        line(out, &format!("{p}: {step}"), v);
        if step.starts_with("ipam ") {
            if let Some(v) = vh {
                let _ = writeln!(
                    out,
                    "| &nbsp;&nbsp;host-local: process start (VERSION, in the same cycles) | {} | | {} |",
                    us(v),
                    share(v)
                );
            }
            line(
                out,
                if t.in_process {
                    "&nbsp;&nbsp;host-local (in bridge's process, on a thread): untraced (ipam step − host-local's steps: thread start, join)"
                } else {
                    "&nbsp;&nbsp;host-local: untraced (ipam step − host-local's steps: process start, exit, pipes)"
                },
                &t.ipam_rest_us,
            );
            for (p2, s2, v2) in t.steps.iter().filter(|s| s.0 == "host-local") {
                line(out, &format!("&nbsp;&nbsp;{p2}: {s2}"), v2);
            }
        }
    }
    out.push('\n');
    // A reading of the table: the largest parts.
    let mut parts: Vec<(String, f64)> = Vec::new();
    if let Some(v) = vb {
        parts.push(("bridge process start".into(), v));
    }
    if let Some(v) = vh {
        parts.push(("host-local process start".into(), v));
    }
    for (p, step, v) in &t.steps {
        if step.starts_with("ipam ") {
            continue;
        }
        parts.push((format!("{p}: {step}"), quantile(v, 0.5).unwrap_or(0.0)));
    }
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<String> = parts
        .iter()
        .take(4)
        .map(|(n, v)| format!("{n} {} ({})", us(*v), share(*v)))
        .collect();
    if !top.is_empty() {
        let starts = vb.unwrap_or(0.0) + vh.unwrap_or(0.0);
        let _ = writeln!(
            out,
            "Largest parts: {}. {} {} of the ADD.\n",
            top.join("; "),
            if t.in_process {
                "host-local ran in bridge's process (one process start); it is"
            } else {
                "The two process starts together are"
            },
            share(starts)
        );
    }
    if t.unparsed > 0 {
        let _ = writeln!(out, "({} TRACE lines could not be parsed.)\n", t.unparsed);
    }
}
