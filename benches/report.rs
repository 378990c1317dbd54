//! What report strategies save, for a realistic site: 100 meters × 20 points polled every
//! second for one (simulated) hour — values drifting slowly (±2 % over the hour) with noise
//! (±0.1 %), and one step change (+5 %) a minute on each meter. The readings go through the
//! report stage exactly as the daemon's ingest feeds it, and what it keeps is packed into
//! messages by the ThingsBoard dialect with the uplink's own fitting (everything queued within
//! a second goes out together, as a live uplink drains it). Printed per strategy: records,
//! values, messages and MQTT bytes per hour, and the stage's CPU per reading — `always` (today's
//! behaviour) is the baseline in the same run.
//! Run: `cargo bench --bench report` (FG_BENCH_MINUTES to simulate another length).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldgate::queue::Record;
use fieldgate::report::{Agg, ChildRules, Keep, Rule, Stage, Strategy};
use fieldgate::uplink::fit::{fit, packet_size};
use fieldgate_driver::{Report, Value};

const METERS: usize = 100;
const POINTS: usize = 20;
const START_MS: u64 = 1_767_225_600_000;

/// A small deterministic generator (no dependency).
struct Lcg(u64);

impl Lcg {
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

struct Site {
    rng: Lcg,
    /// Per meter and point: the level steps have moved it to.
    level: Vec<Vec<f64>>,
}

impl Site {
    fn new() -> Self {
        Site {
            rng: Lcg(0x5eed),
            level: (0..METERS)
                .map(|_| (0..POINTS).map(|k| 100.0 + 10.0 * k as f64).collect())
                .collect(),
        }
    }

    /// Every meter's reading at second `s`.
    fn poll(&mut self, s: u64) -> Vec<Report> {
        let drift = 1.0 + 0.02 * (2.0 * std::f64::consts::PI * s as f64 / 3600.0).sin();
        (0..METERS)
            .map(|m| {
                // One step a minute per meter, on a point of its own choosing.
                if s % 60 == (m as u64 * 7) % 60 {
                    let k = (s / 60 + m as u64) as usize % POINTS;
                    self.level[m][k] *= 1.05;
                }
                let properties = (0..POINTS)
                    .map(|k| {
                        let noise = 1.0 + 0.001 * self.rng.unit();
                        let v = (self.level[m][k] * drift * noise * 100.0).round() / 100.0;
                        (format!("p{k:02}").into(), Value::Float(v))
                    })
                    .collect();
                Report {
                    child: format!("meter-{m:03}"),
                    service: "energy".into(),
                    properties,
                    ts_ms: START_MS + s * 1000,
                }
            })
            .collect()
    }
}

struct Figures {
    records: u64,
    values: u64,
    messages: u64,
    bytes: u64,
    stage_ns_per_reading: f64,
}

fn run(rule: Rule, seconds: u64) -> Figures {
    let mut stage = Stage::new();
    let rules: HashMap<String, Arc<ChildRules>> = (0..METERS)
        .map(|m| {
            (
                format!("meter-{m:03}"),
                Arc::new(ChildRules {
                    default: rule.clone(),
                    by_property: HashMap::new(),
                }),
            )
        })
        .collect();
    stage.set_rules(rules);
    let cfg = fieldgate::config::parse(
        "[platform]\ndialect = \"thingsboard\"\nhost = \"h\"\ndevice_id = \"gw\"\nsecret = \"t\"\n",
        Path::new("bench.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut dialect = fieldgate::uplink::dialect::for_platform(&cfg.platform);
    let mut site = Site::new();
    let mut stage_time = Duration::ZERO;
    let (mut records, mut values, mut messages, mut bytes, mut readings) = (0, 0, 0, 0, 0u64);
    let mut seq = 0u64;
    for s in 0..seconds {
        let polled = site.poll(s);
        readings += polled.len() as u64;
        // The stage, timed alone: what the ingest does per reading.
        let t = Instant::now();
        let mut queued: Vec<Report> = Vec::new();
        for r in polled {
            let mut closed = Vec::new();
            let keep = stage.report(&r, &mut closed);
            queued.extend(closed);
            match keep {
                Keep::All => queued.push(r),
                Keep::Nothing => {}
                Keep::Some(properties) => queued.push(Report { properties, ..r }),
            }
        }
        queued.extend(stage.tick(START_MS + s * 1000));
        let _ = stage.take_bases();
        stage_time += t.elapsed();
        // What a live uplink sends of one second's records.
        records += queued.len() as u64;
        values += queued
            .iter()
            .map(|r| r.properties.len() as u64)
            .sum::<u64>();
        let mut recs: Vec<(u64, String, Record)> = queued
            .into_iter()
            .map(|r| {
                seq += 1;
                (seq, r.child.clone(), Record::Report(r))
            })
            .collect();
        while !recs.is_empty() {
            let f = fit(dialect.as_mut(), &recs, 256 * 1024, START_MS + s * 1000);
            messages += f.messages.len() as u64;
            bytes += f.messages.iter().map(packet_size).sum::<usize>() as u64;
            recs.drain(..f.consumed.max(1));
        }
    }
    let per_hour = |x: u64| x * 3600 / seconds.max(1);
    Figures {
        records: per_hour(records),
        values: per_hour(values),
        messages: per_hour(messages),
        bytes: per_hour(bytes),
        stage_ns_per_reading: stage_time.as_nanos() as f64 / readings.max(1) as f64,
    }
}

fn main() {
    let minutes: u64 = std::env::var("FG_BENCH_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let seconds = minutes * 60;
    println!(
        "site: {METERS} meters × {POINTS} points polled every 1 s, {minutes} min simulated; per hour:"
    );
    let strategies: Vec<(&str, Rule)> = vec![
        ("always (today, baseline)", Rule::default()),
        (
            "on_change_or_period, 0.5 %, 15 min",
            Rule {
                strategy: Strategy::OnChangeOrPeriod,
                deadband_percent: 0.5,
                period: Some(Duration::from_secs(900)),
                ..Rule::default()
            },
        ),
        (
            "aggregate avg/min/max, 1 min",
            Rule {
                aggregate: vec![Agg::Avg, Agg::Min, Agg::Max],
                window: Duration::from_secs(60),
                ..Rule::default()
            },
        ),
    ];
    let mut base: Option<Figures> = None;
    println!(
        "{:<38} {:>10} {:>11} {:>10} {:>12} {:>8} {:>14}",
        "strategy", "records", "values", "messages", "MQTT bytes", "bytes %", "stage ns/read"
    );
    for (name, rule) in strategies {
        let f = run(rule, seconds);
        let pct = base
            .as_ref()
            .map_or(100.0, |b| 100.0 * f.bytes as f64 / b.bytes.max(1) as f64);
        println!(
            "{name:<38} {:>10} {:>11} {:>10} {:>12} {:>7.1}% {:>14.0}",
            f.records, f.values, f.messages, f.bytes, pct, f.stage_ns_per_reading
        );
        if base.is_none() {
            base = Some(f);
        }
    }
}
