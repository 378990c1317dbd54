//! Footprint under a steady load: the release binary polls 100 Modbus devices × 100 points
//! (ten buses of ten devices on one in-process Modbus server) and delivers everything to a real
//! mosquitto (ThingsBoard dialect, no subscriber: the broker acknowledges and discards). For
//! each rate — every second (10,000 points/s) and every 100 ms (100,000 points/s) — it runs
//! FG_SOAK_S seconds (default 120) after a 10 s warm-up, samples the daemon's RSS every 5 s
//! and prints RSS at start / max / end, the slope per hour (least squares), the points
//! delivered per second and per CPU-second of the daemon, and — as the baseline measured in
//! the same run — the CPU the broker spent carrying the same messages.
//!
//! First, the poll timing: 50 devices every 100 ms for FG_SOAK_JITTER_S seconds (default 60,
//! 0 skips it), each device's periods measured where the requests arrive.
//!
//! Run: `cargo bench --bench soak` (FG_SOAK_S=1800 for the 30-minute target; FG_SOAK_RATES
//! = "1000,100" for the poll periods in ms; FG_BIN=path/to/fieldgate to run another build, e.g.
//! an older commit's, as a baseline). Asserts nothing about time or size.
//!
//! CPU seconds on a shared 2-core VM move by ±15 % (more between runs), too much to compare
//! two builds by. FG_SOAK_COUNT_S=60 instead counts the instructions the daemon executes per
//! delivered point under valgrind's callgrind at 10,000 points/s (only that; the same figure
//! every run to within about 3 %), and FG_BIN picks the build to count (FG_SOAK_COUNT_KEEP=dir
//! keeps callgrind's dumps there, for `callgrind_annotate`).
//!
//! The binary cargo builds for a bench carries the driver crates' test helpers (dev-dependency
//! features are unified), about 0.4 MB more code than the packaged one, and its file-backed
//! pages count in RSS: `cargo build --release && cp target/release/fieldgate /tmp/fg` before
//! the bench (which rebuilds target/release/fieldgate), then FG_BIN=/tmp/fg measures what ships.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const DEVICES: usize = 100;
const POINTS: usize = 100;
const BUSES: usize = 10;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One field of `/proc/{pid}/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resident set size of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// CPU time (user + system) of `pid`, in seconds.
fn cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn delivered(cfg: &Path) -> u64 {
    status(cfg)["queue"]["delivered"].as_u64().unwrap_or(0)
}

fn config(
    dir: &Path,
    port: u16,
    modbus: u16,
    poll_ms: u64,
    devices: usize,
    buses: usize,
) -> PathBuf {
    let mut text = format!(
        r#"
[gateway]
runtime_dir = "{d}/run"
[platform]
dialect = "thingsboard"
host = "127.0.0.1"
port = {port}
tls = false
device_id = "soak"
secret = "token"
[store]
path = "{d}/soak.db"
[profile.meter]
"#,
        d = dir.display()
    );
    for p in 0..POINTS {
        text.push_str(&format!(
            "[[profile.meter.point]]\nproperty = \"p{p:03}\"\naddress = \"holding:{p}\"\n"
        ));
    }
    for b in 0..buses {
        text.push_str(&format!(
            "[[bus]]\nname = \"bus{b}\"\ndriver = \"modbus-tcp\"\nendpoint = \"127.0.0.1:{modbus}\"\n"
        ));
    }
    for d in 0..devices {
        text.push_str(&format!(
            "[[device]]\nnode_id = \"d{d:03}\"\nbus = \"bus{}\"\nprofile = \"meter\"\nunit = {}\npoll = \"{poll_ms}ms\"\n",
            d % buses,
            1 + d / buses
        ));
    }
    let cfg = dir.join(format!("soak-{poll_ms}.toml"));
    std::fs::write(&cfg, text).unwrap_or_else(|e| panic!("{e}"));
    cfg
}

/// Least-squares slope of (seconds, KiB) samples, in MB per hour.
fn slope_mb_per_hour(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = samples
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = samples.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den * 3600.0 / 1024.0
    }
}

/// The instructions callgrind counted: the largest `totals:` line of the dumps in `dir` (the
/// one asked for at the end; the file named at start is only written on exit).
fn counted(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("cg.out"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("totals:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .max()
}

fn callgrind_control(args: &[&str]) {
    let ok = std::process::Command::new("callgrind_control")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "callgrind_control {args:?} failed");
}

/// Instructions per delivered point: the daemon runs under callgrind (instrumentation off through
/// start-up and the warm-up), counts for `secs`, and the count is divided by the points
/// delivered meanwhile. Deterministic where CPU seconds on a shared VM are not; under
/// callgrind the daemon runs ~50× slower, so run it at 10,000 points/s, not 100,000.
fn count(poll_ms: u64, secs: u64) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let sim = ModbusSim::new(SimState::default());
    let cfg = config(dir.path(), broker.port, sim.port, poll_ms, DEVICES, BUSES);
    let out = format!("--callgrind-out-file={}/cg.out", dir.path().display());
    let gw = Gateway::start_under(
        &cfg,
        &[],
        &["valgrind", "--tool=callgrind", "--instr-atstart=no", &out],
    );
    let pid = gw.child.id().to_string();
    wait_until(Duration::from_secs(120), "first deliveries", || {
        delivered(&cfg) > 0
    });
    std::thread::sleep(Duration::from_secs(10));
    // The status calls that read the delivered count (a JSON tree of all 10,000 latest
    // values each) stay outside the counted window: they are the harness's work. The points
    // counted are the delivery rate between the two calls over the counted window.
    let ta = Instant::now();
    let d0 = delivered(&cfg);
    callgrind_control(&["-i", "on", &pid]);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    callgrind_control(&["-i", "off", &pid]);
    let wall = t0.elapsed().as_secs_f64();
    let d1 = delivered(&cfg);
    let rate = (d1 - d0) as f64 * POINTS as f64 / ta.elapsed().as_secs_f64();
    let points = rate * wall;
    callgrind_control(&["-d", &pid]);
    // FG_SOAK_COUNT_KEEP=dir: the dumps are kept there, for callgrind_annotate.
    if let Some(keep) = std::env::var_os("FG_SOAK_COUNT_KEEP") {
        for e in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with("cg.out") {
                let _ = std::fs::copy(e.path(), Path::new(&keep).join(e.file_name()));
            }
        }
    }
    let ir = counted(dir.path());
    if ir.is_none() {
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        println!("no callgrind totals in {files:?}");
    }
    let ir = ir.unwrap_or(0) as f64;
    println!(
        "{DEVICES} devices × {POINTS} points every {poll_ms} ms under callgrind, {wall:.0} s: {:.0} points/s delivered, {:.0} instructions per delivered point ({:.2} G in all)",
        points / wall,
        if points > 0.0 { ir / points } else { 0.0 },
        ir / 1e9,
    );
    drop(gw);
}

fn run(poll_ms: u64, secs: u64) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let sim = ModbusSim::new(SimState::default());
    let cfg = config(dir.path(), broker.port, sim.port, poll_ms, DEVICES, BUSES);
    let gw = Gateway::start(&cfg);
    let pid = gw.child.id();
    let broker_pid = broker.pid();
    wait_until(Duration::from_secs(30), "first deliveries", || {
        delivered(&cfg) > 0
    });
    std::thread::sleep(Duration::from_secs(10));
    let (d0, c0, b0, t0) = (
        delivered(&cfg),
        cpu_s(pid).unwrap_or(0.0),
        broker_pid.and_then(cpu_s).unwrap_or(0.0),
        Instant::now(),
    );
    // The harness's own status call (a JSON tree of all 10,000 latest values) is given back
    // by the daemon right after it answers; the first sample follows that.
    std::thread::sleep(Duration::from_secs(2));
    let mut samples = Vec::new();
    // Anonymous memory (the heap, stacks) apart from file-backed pages (the binary's code).
    let mut anon = Vec::new();
    let sample = |samples: &mut Vec<(f64, f64)>, anon: &mut Vec<f64>| {
        if let Some(r) = rss_kib(pid) {
            samples.push((t0.elapsed().as_secs_f64(), r as f64));
            anon.push(status_kib(pid, "RssAnon:").unwrap_or(0) as f64);
        }
    };
    while t0.elapsed() < Duration::from_secs(secs) {
        sample(&mut samples, &mut anon);
        std::thread::sleep(Duration::from_secs(5));
    }
    sample(&mut samples, &mut anon);
    let wall = t0.elapsed().as_secs_f64();
    let points = (delivered(&cfg) - d0) as f64 * POINTS as f64;
    let cpu = cpu_s(pid).unwrap_or(0.0) - c0;
    let broker_cpu = broker_pid.and_then(cpu_s).unwrap_or(0.0) - b0;
    let mb = |k: f64| k / 1024.0;
    let start = samples.first().map_or(0.0, |s| s.1);
    let max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let end = samples.last().map_or(0.0, |s| s.1);
    let q = status(&cfg);
    let anon_max = anon.iter().copied().fold(0.0, f64::max);
    // The largest rise between samples that the end still holds (a step that stays).
    let stays = samples
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).min(end - w[0].1))
        .fold(0.0, f64::max);
    println!(
        "{} devices × {POINTS} points every {poll_ms} ms, {wall:.0} s: RSS start {:.1} MB, max {:.1} MB, end {:.1} MB ({:+.1} %), slope {:+.2} MB/h; {:.0} points/s delivered, {:.0} points per CPU-second (daemon {cpu:.1} CPU-s = {:.0} % of a core; broker baseline {broker_cpu:.1} CPU-s); queue at end {} records",
        DEVICES,
        mb(start),
        mb(max),
        mb(end),
        if start > 0.0 { (max - start) / start * 100.0 } else { 0.0 },
        slope_mb_per_hour(&samples),
        points / wall,
        if cpu > 0.0 { points / cpu } else { 0.0 },
        cpu / wall * 100.0,
        q["queue"]["records"],
    );
    let max_at = samples.iter().find(|s| s.1 >= max).map_or(0.0, |s| s.0);
    println!(
        "  of which anonymous (heap, stacks): start {:.1} MB, max {:.1} MB, end {:.1} MB; largest step that stays {:.1} MB; RSS max first at {max_at:.0} s",
        mb(anon.first().copied().unwrap_or(0.0)),
        mb(anon_max),
        mb(anon.last().copied().unwrap_or(0.0)),
        mb(stays.max(0.0)),
    );
    println!(
        "  drivers waited for room on the way to the store {} times; slowest commit {} ms",
        q["queue"]["drivers_waited"], q["queue"]["slowest_commit_ms"],
    );
    drop(gw);
}

/// Poll timing: 50 devices × 100 points every 100 ms on 5 buses; the simulator notes when
/// each request arrives, and the spread of each device's periods around 100 ms is printed
/// (p50, p99, max, as a share of the period).
fn jitter(secs: u64) {
    const PERIOD_MS: u64 = 100;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broker = Mosquitto::start(dir.path());
    let sim = ModbusSim::new(SimState {
        arrivals: Some(std::sync::Mutex::new(std::collections::HashMap::new())),
        ..SimState::default()
    });
    let cfg = config(dir.path(), broker.port, sim.port, PERIOD_MS, 50, 5);
    let gw = Gateway::start(&cfg);
    wait_until(Duration::from_secs(30), "first deliveries", || {
        delivered(&cfg) > 0
    });
    std::thread::sleep(Duration::from_secs(5));
    let t0 = Instant::now();
    if let Some(a) = &sim.state.arrivals {
        if let Ok(mut a) = a.lock() {
            a.clear();
        }
    }
    std::thread::sleep(Duration::from_secs(secs));
    let mut dev: Vec<f64> = Vec::new();
    let mut devices = 0;
    if let Some(a) = &sim.state.arrivals {
        if let Ok(a) = a.lock() {
            for times in a.values() {
                devices += 1;
                for w in times.windows(2) {
                    let dt = w[1].duration_since(w[0]).as_secs_f64() * 1000.0;
                    dev.push((dt - PERIOD_MS as f64).abs() / PERIOD_MS as f64 * 100.0);
                }
            }
        }
    }
    drop(gw);
    dev.sort_by(f64::total_cmp);
    let at = |q: f64| {
        dev.get(((dev.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "poll timing, 50 devices × 100 points every {PERIOD_MS} ms, {:.0} s: {} periods of {devices} devices; deviation from the period p50 {:.2} %, p99 {:.2} %, max {:.1} %",
        t0.elapsed().as_secs_f64(),
        dev.len(),
        at(0.5),
        at(0.99),
        dev.last().copied().unwrap_or(0.0),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::var_os("FG_BIN").is_none() {
        println!(
            "note: measuring the bench's own build of the binary (with the test helpers, ~0.4 MB more code than the packaged one); FG_BIN=<a release build> measures what ships"
        );
    }
    let count_s = env("FG_SOAK_COUNT_S", 0);
    if count_s > 0 {
        count(1000, count_s);
        return;
    }
    let jitter_s = env("FG_SOAK_JITTER_S", 60);
    if jitter_s > 0 {
        jitter(jitter_s);
    }
    let secs = env("FG_SOAK_S", 120);

    let rates = std::env::var("FG_SOAK_RATES").unwrap_or_else(|_| "1000,100".into());
    for poll in rates
        .split(',')
        .filter_map(|r| r.trim().parse::<u64>().ok())
    {
        run(poll, secs);
    }
}
