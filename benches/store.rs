//! Store figures: appends/s and acks/s with group commit (batches of 1000), bytes on disk per
//! record, memory (RSS) with a 1,000,000-record backlog, and the file size once it has drained
//! (space reclaimed by incremental vacuum). Prints figures; asserts nothing about time.
//! Run: `cargo bench --bench store` (FG_BENCH_RECORDS to change the backlog size).

use std::time::{Duration, Instant};

use fieldgate::memory::rss_kib;
use fieldgate::store::{Limits, NewRow, Store};

fn disk(path: &std::path::Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .map(|ext| {
            std::fs::metadata(format!("{}{ext}", path.display()))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

fn main() {
    let n: usize = std::env::var("FG_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("bench.db");
    let limits = Limits {
        max_bytes: 1 << 40,
        max_priority_bytes: 1 << 30,
        max_age: Duration::from_secs(86_400),
    };
    let store = Store::open(&path, limits, false).unwrap_or_else(|e| panic!("{e}"));
    let rss0 = rss_kib();
    let empty = disk(&path);
    // A typical report, encoded as the queue stores it (v2, compact binary).
    let body = fieldgate::queue::Record::Report(fieldgate_driver::Report {
        child: "meter-17".into(),
        service: "energy".into(),
        properties: fieldgate_driver::Properties::from([
            ("voltage".into(), fieldgate_driver::Value::Float(230.5)),
            ("current".into(), fieldgate_driver::Value::Float(5.12)),
            ("energy".into(), fieldgate_driver::Value::UInt(123_456)),
        ]),
        ts_ms: fieldgate_driver::now_ms(),
    })
    .encode()
    .body;
    let batch = 1000;
    let t = Instant::now();
    rt.block_on(async {
        for b in 0..n / batch {
            let rows: Vec<NewRow> = (0..batch)
                .map(|i| NewRow {
                    kind: 1,
                    child: format!("meter-{}", (b * batch + i) % 64),
                    ts_ms: fieldgate_driver::now_ms(),
                    body: body.clone(),
                })
                .collect();
            store.append(rows).await.unwrap_or_else(|e| panic!("{e}"));
        }
    });
    let append_s = t.elapsed().as_secs_f64();
    let full = disk(&path);
    let rss_full = rss_kib();
    let t = Instant::now();
    rt.block_on(async {
        let mut after = 0;
        loop {
            let rows = store
                .scan(after, batch)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let Some(last) = rows.last().map(|r| r.seq) else {
                break;
            };
            after = last;
            store
                .delete(rows.iter().map(|r| r.seq).collect())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    });
    let ack_s = t.elapsed().as_secs_f64();
    drop(store);
    std::thread::sleep(Duration::from_millis(500));
    let drained = disk(&path);
    if let Ok(c) = rusqlite::Connection::open(&path) {
        let q = |p: &str| {
            c.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0))
                .unwrap_or(-1)
        };
        println!(
            "  (auto_vacuum {}, pages {}, free pages {})",
            q("auto_vacuum"),
            q("page_count"),
            q("freelist_count")
        );
    }
    println!(
        "store benchmark: {n} records of {} B body, batches of {batch}",
        body.len()
    );
    println!(
        "  appends        {:>10.0} records/s  ({append_s:.2} s)",
        n as f64 / append_s
    );
    println!(
        "  scan + ack     {:>10.0} records/s  ({ack_s:.2} s)",
        n as f64 / ack_s
    );
    println!(
        "  on disk        {:>10.1} bytes/record  ({:.1} MiB for the backlog; {:.1} KiB empty)",
        (full - empty) as f64 / n as f64,
        full as f64 / 1048576.0,
        empty as f64 / 1024.0
    );
    println!(
        "  after draining {:>10.1} MiB on disk (incremental vacuum)",
        drained as f64 / 1048576.0
    );
    println!(
        "  RSS            {:>10.1} MiB with the backlog ({:.1} MiB before)",
        rss_full as f64 / 1024.0,
        rss0 as f64 / 1024.0
    );
}
