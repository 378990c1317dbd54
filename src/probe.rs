//! `fieldgate modbus read|scan` (TCP or RTU) and `fieldgate serial sniff`: run the driver crates'
//! probes and format what they found for a person with a laptop at the cabinet.

use fieldgate_modbus::point::{parse_location, DataType, Order, PointError, PointSpec};
use std::time::Duration;

use fieldgate_modbus::probe::{self, Presence};
use fieldgate_modbus::Transport;
use fieldgate_port::{Parity, PortError, PortSettings, SettingsError};

use crate::cli::{BleProbe, Line, ModbusProbe, SerialProbe};

/// Why a probe could not run or got no answer; one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("bad unit `{0}` (unit ids are 0..=255)")]
    BadUnit(String),
    #[error("empty range `{0}`")]
    EmptyRange(String),
    #[error("no unit ids given")]
    NoUnits,
    #[error("give --endpoint host:port (TCP) or --port /dev/tty… (RTU)")]
    NoTarget,
    #[error(transparent)]
    Point(#[from] PointError),
    /// The point's own rules (`PointSpec::validate`), e.g. a write to a read-only table.
    #[error("{0}")]
    PointRule(String),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Modbus(#[from] probe::ProbeError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("reading the port: {0}")]
    Sniff(std::io::Error),
    #[cfg(feature = "ble")]
    #[error("BLE scan: {0}")]
    Ble(#[from] fieldgate_ble::scan::ScanError),
    #[error(
        "this fieldgate was built without BLE support (cargo feature `ble`; the packages have it)"
    )]
    NoBle,
}

fn runtime() -> Result<tokio::runtime::Runtime, ProbeError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProbeError::Runtime)
}

fn units(spec: &str) -> Result<Vec<u8>, ProbeError> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let unit = |s: &str| {
            s.trim()
                .parse::<u8>()
                .map_err(|_| ProbeError::BadUnit(s.to_string()))
        };
        let (a, b) = (unit(a)?, unit(b)?);
        if a > b {
            return Err(ProbeError::EmptyRange(part.to_string()));
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        return Err(ProbeError::NoUnits);
    }
    Ok(out)
}

/// The probe's transport, and how to name it in the output.
fn target(line: Line, timeout: Duration) -> Result<(Transport, String), ProbeError> {
    match (line.endpoint, line.port) {
        (Some(e), _) => Ok((Transport::Tcp(e.clone()), e)),
        (None, Some(path)) => {
            let port = PortSettings {
                path,
                baud: line.baud,
                parity: Parity::parse(&line.parity)?,
                data_bits: line.data_bits,
                stop_bits: line.stop_bits,
            };
            port.validate()?;
            let t = Transport::Rtu {
                port,
                settle: timeout,
            };
            let name = t.describe();
            Ok((t, name))
        }
        (None, None) => Err(ProbeError::NoTarget),
    }
}

fn point(address: &str, dtype: &str, length: Option<u16>) -> Result<PointSpec, ProbeError> {
    let (table, address) = parse_location(address)?;
    let dtype = if table.is_bits() {
        DataType::Bool
    } else {
        DataType::parse(dtype, length)?
    };
    let mut p = PointSpec::new("probe", "value", table, address, dtype);
    p.bit = (dtype == DataType::Bool && !table.is_bits()).then_some(0);
    Ok(p)
}

pub fn modbus(cmd: ModbusProbe) -> Result<String, ProbeError> {
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            ModbusProbe::Read {
                line,
                unit,
                address,
                dtype,
                count,
                length,
                byte_order,
                word_order,
                scale,
                offset,
                timeout,
            } => {
                let mut p = point(&address, &dtype, length)?;
                p.byte_order = Order::parse(&byte_order)?;
                p.word_order = Order::parse(&word_order)?;
                p.scale = scale;
                p.offset = offset;
                if let Some(e) = p.validate().into_iter().next() {
                    return Err(ProbeError::PointRule(e));
                }
                let (target, endpoint) = target(line, timeout)?;
                let mut ctx = probe::connect(&target, timeout).await?;
                let r = probe::read(&mut ctx, unit, &p, count, timeout).await?;
                let mut lines = vec![format!("{endpoint} unit {unit} {}:{}", p.table, p.address)];
                for (i, w) in r.words.iter().enumerate() {
                    lines.push(format!(
                        "  {:>5}  0x{w:04x}  {w:>5}  {:>6}",
                        usize::from(p.address) + i,
                        *w as i16
                    ));
                }
                for (i, b) in r.bits.iter().enumerate() {
                    lines.push(format!(
                        "  {:>5}  {}",
                        usize::from(p.address) + i,
                        u8::from(*b)
                    ));
                }
                if let Some(v) = r.value {
                    lines.push(format!(
                        "as {dtype} (bytes {byte_order}, words {word_order}): {}",
                        v.to_json()
                    ));
                }
                Ok(lines.join("\n"))
            }
            ModbusProbe::Scan {
                line,
                units: spec,
                address,
                timeout,
            } => {
                let ids = units(&spec)?;
                let p = point(&address, "u16", None)?;
                let (target, endpoint) = target(line, timeout)?;
                let found = probe::scan(&target, ids.iter().copied(), &p, timeout).await?;
                let mut lines = Vec::new();
                let mut n = 0;
                for (unit, presence) in &found {
                    match presence {
                        Presence::Answered => {
                            n += 1;
                            lines.push(format!("  unit {unit:>3}  answers"));
                        }
                        Presence::Exception(e) => {
                            lines.push(format!("  unit {unit:>3}  exception {e}"))
                        }
                        Presence::Silent => {}
                    }
                }
                lines.insert(
                    0,
                    format!(
                        "{endpoint}: {n} of {} unit ids answer {address} (silent ones not listed)",
                        found.len()
                    ),
                );
                Ok(lines.join("\n"))
            }
        }
    })
}

pub fn serial(cmd: SerialProbe) -> Result<(), ProbeError> {
    let SerialProbe::Sniff {
        port,
        baud,
        parity,
        data_bits,
        stop_bits,
        gap,
        duration,
    } = cmd;
    let settings = PortSettings {
        path: port,
        baud,
        parity: Parity::parse(&parity)?,
        data_bits,
        stop_bits,
    };
    let gap = gap.unwrap_or_else(|| {
        settings
            .char_time(3.5)
            .max(std::time::Duration::from_millis(1))
    });
    let rt = runtime()?;
    rt.block_on(async move {
        let stream = fieldgate_port::open(&settings)?;
        println!(
            "sniffing {} at {baud} {data_bits}{}{stop_bits}, frames end after {gap:?} of silence",
            settings.path,
            parity.chars().next().unwrap_or('n').to_ascii_uppercase()
        );
        let until = duration.map(|d| std::time::Instant::now() + d);
        let sniff = fieldgate_serial::sniff::sniff(stream, gap, until, |f| {
            let (_, _, _, h, m, s, ms) = crate::uplink::dialect::utc(fieldgate_driver::now_ms());
            println!(
                "{h:02}:{m:02}:{s:02}.{ms:03}  +{:>9}  {:>4} B  {}",
                format!("{:.1}ms", f.idle_before.as_secs_f64() * 1000.0),
                f.bytes.len(),
                fieldgate_serial::sniff::format_bytes(&f.bytes)
            );
        });
        tokio::select! {
            r = sniff => r.map_err(ProbeError::Sniff),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// `fieldgate ble scan`: every device heard, with RSSI and what the daemon's decoders make of it.
#[cfg(feature = "ble")]
pub fn ble(cmd: BleProbe) -> Result<String, ProbeError> {
    let BleProbe::Scan { adapter, duration } = cmd;
    let rt = runtime()?;
    let seen = rt.block_on(fieldgate_ble::scan::scan(adapter.as_deref(), duration))?;
    let mut lines = vec![format!(
        "{} device(s) heard on {} in {duration:?}",
        seen.len(),
        adapter.as_deref().unwrap_or("the default adapter")
    )];
    for s in &seen {
        let what = match &s.decoded {
            Some(Ok(p)) => p
                .iter()
                .map(|(k, v)| format!("{k}={}", v.to_json()))
                .collect::<Vec<_>>()
                .join(" "),
            Some(Err(e)) => format!("undecodable: {e}"),
            None => {
                let uuids: Vec<String> =
                    s.service_uuids.iter().map(|u| format!("{u:04x}")).collect();
                let companies: Vec<String> =
                    s.companies.iter().map(|c| format!("{c:04x}")).collect();
                format!(
                    "no known format (service data [{}], manufacturer [{}])",
                    uuids.join(","),
                    companies.join(",")
                )
            }
        };
        lines.push(format!(
            "  {}  {:>4} dBm  {:<16}  {what}",
            s.address,
            s.rssi.map_or("?".to_string(), |r| r.to_string()),
            s.name.as_deref().unwrap_or("-")
        ));
    }
    Ok(lines.join("\n"))
}

#[cfg(not(feature = "ble"))]
pub fn ble(_cmd: BleProbe) -> Result<String, ProbeError> {
    Err(ProbeError::NoBle)
}

#[cfg(test)]
mod tests {
    use super::{units, ProbeError};

    #[test]
    fn unit_lists() {
        assert_eq!(units("1-3,7").ok(), Some(vec![1, 2, 3, 7]));
        assert_eq!(units("5").ok(), Some(vec![5]));
        assert!(matches!(units("3-1"), Err(ProbeError::EmptyRange(r)) if r == "3-1"));
        assert!(matches!(units("1-300"), Err(ProbeError::BadUnit(u)) if u == "300"));
        assert!(matches!(units(""), Err(ProbeError::NoUnits)));
    }
}
