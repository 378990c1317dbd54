//! Advertisement decoders for the common BLE sensor formats, as pure functions over the bytes
//! BlueZ hands over (a service-data value or a manufacturer-data value, without the UUID or
//! company id). Each returns typed properties or says why the frame is unusable; values a
//! format marks as "not available" are left out rather than reported.
//!
//! - **BTHome v2** — service data UUID `0xFCD2`: a device-info byte, then (object id, value)
//!   pairs, little-endian, ids ascending (bthome.io/format).
//! - **RuuviTag RAWv2** (data format 5) — manufacturer id `0x0499`, 24 bytes big-endian
//!   (docs.ruuvi.com, "Data format 5").
//! - **ATC1441 / pvvx** custom thermometer firmware — service data UUID `0x181A`: 13 bytes
//!   (ATC1441, big-endian) or 15 bytes (pvvx, little-endian).

use std::collections::BTreeMap;

use fieldgate_driver::Value;

pub const BTHOME_UUID16: u16 = 0xFCD2;
pub const ATC_UUID16: u16 = 0x181A;
pub const RUUVI_COMPANY: u16 = 0x0499;

pub type Props = BTreeMap<String, Value>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("{format}: {len} bytes is not a valid length")]
    Length { format: &'static str, len: usize },
    #[error("BTHome: encrypted advertisements need a bind key (not supported)")]
    Encrypted,
    #[error("BTHome: version {0}, expected 2")]
    Version(u8),
    #[error("BTHome: unknown object id {0:#04x} (its length is unknown, the rest is skipped)")]
    UnknownObject(u8),
    #[error("Ruuvi: data format {0}, only 5 (RAWv2) is supported")]
    RuuviFormat(u8),
}

/// A format a device is configured with (or `Auto`: whatever its advertisement carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    BtHome,
    Ruuvi,
    Atc,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self, crate::spec::SpecError> {
        match s {
            "auto" => Ok(Format::Auto),
            "bthome" => Ok(Format::BtHome),
            "ruuvi" => Ok(Format::Ruuvi),
            "atc" | "pvvx" => Ok(Format::Atc),
            other => Err(crate::spec::SpecError::Format(other.to_string())),
        }
    }
}

/// Decode whatever a device's advertisement holds in the configured format. `service_data`
/// is keyed by 16-bit UUID, `manufacturer` by company id. `None`: nothing in this format.
pub fn decode(
    format: Format,
    service_data: &BTreeMap<u16, Vec<u8>>,
    manufacturer: &BTreeMap<u16, Vec<u8>>,
) -> Option<Result<Props, DecodeError>> {
    let want = |f: Format| format == Format::Auto || format == f;
    if want(Format::BtHome) {
        if let Some(d) = service_data.get(&BTHOME_UUID16) {
            return Some(bthome(d));
        }
    }
    if want(Format::Ruuvi) {
        if let Some(d) = manufacturer.get(&RUUVI_COMPANY) {
            return Some(ruuvi(d));
        }
    }
    if want(Format::Atc) {
        if let Some(d) = service_data.get(&ATC_UUID16) {
            return Some(atc(d));
        }
    }
    None
}

/// (id, property, bytes, signed, factor) for the BTHome v2 sensor and binary objects.
const BTHOME: &[(u8, &str, usize, bool, f64)] = &[
    (0x00, "packet_id", 1, false, 1.0),
    (0x01, "battery", 1, false, 1.0),
    (0x02, "temperature", 2, true, 0.01),
    (0x03, "humidity", 2, false, 0.01),
    (0x04, "pressure", 3, false, 0.01),
    (0x05, "illuminance", 3, false, 0.01),
    (0x06, "mass_kg", 2, false, 0.01),
    (0x07, "mass_lb", 2, false, 0.01),
    (0x08, "dewpoint", 2, true, 0.01),
    (0x09, "count", 1, false, 1.0),
    (0x0A, "energy", 3, false, 0.001),
    (0x0B, "power", 3, false, 0.01),
    (0x0C, "voltage", 2, false, 0.001),
    (0x0D, "pm2_5", 2, false, 1.0),
    (0x0E, "pm10", 2, false, 1.0),
    (0x0F, "generic_boolean", 1, false, 1.0),
    (0x10, "power_on", 1, false, 1.0),
    (0x11, "opening", 1, false, 1.0),
    (0x12, "co2", 2, false, 1.0),
    (0x13, "tvoc", 2, false, 1.0),
    (0x14, "moisture", 2, false, 0.01),
    (0x15, "battery_low", 1, false, 1.0),
    (0x16, "battery_charging", 1, false, 1.0),
    (0x17, "carbon_monoxide", 1, false, 1.0),
    (0x18, "cold", 1, false, 1.0),
    (0x19, "connectivity", 1, false, 1.0),
    (0x1A, "door", 1, false, 1.0),
    (0x1B, "garage_door", 1, false, 1.0),
    (0x1C, "gas", 1, false, 1.0),
    (0x1D, "heat", 1, false, 1.0),
    (0x1E, "light", 1, false, 1.0),
    (0x1F, "lock", 1, false, 1.0),
    (0x20, "moisture_detected", 1, false, 1.0),
    (0x21, "motion", 1, false, 1.0),
    (0x22, "moving", 1, false, 1.0),
    (0x23, "occupancy", 1, false, 1.0),
    (0x24, "plug", 1, false, 1.0),
    (0x25, "presence", 1, false, 1.0),
    (0x26, "problem", 1, false, 1.0),
    (0x27, "running", 1, false, 1.0),
    (0x28, "safety", 1, false, 1.0),
    (0x29, "smoke", 1, false, 1.0),
    (0x2A, "sound", 1, false, 1.0),
    (0x2B, "tamper", 1, false, 1.0),
    (0x2C, "vibration", 1, false, 1.0),
    (0x2D, "window", 1, false, 1.0),
    (0x2E, "humidity", 1, false, 1.0),
    (0x2F, "moisture", 1, false, 1.0),
    (0x3A, "button", 1, false, 1.0),
    (0x3C, "dimmer", 2, false, 1.0),
    (0x3D, "count", 2, false, 1.0),
    (0x3E, "count", 4, false, 1.0),
    (0x3F, "rotation", 2, true, 0.1),
    (0x40, "distance_mm", 2, false, 1.0),
    (0x41, "distance_m", 2, false, 0.1),
    (0x42, "duration", 3, false, 0.001),
    (0x43, "current", 2, false, 0.001),
    (0x44, "speed", 2, false, 0.01),
    (0x45, "temperature", 2, true, 0.1),
    (0x46, "uv_index", 1, false, 0.1),
    (0x47, "volume_l", 2, false, 0.1),
    (0x48, "volume_ml", 2, false, 1.0),
    (0x49, "volume_flow_rate", 2, false, 0.001),
    (0x4A, "voltage", 2, false, 0.1),
    (0x4B, "gas", 3, false, 0.001),
    (0x4C, "gas", 4, false, 0.001),
    (0x4D, "energy", 4, false, 0.001),
    (0x4E, "volume", 4, false, 0.001),
    (0x4F, "water", 4, false, 0.001),
    (0x50, "timestamp", 4, false, 1.0),
    (0x51, "acceleration", 2, false, 0.001),
    (0x52, "gyroscope", 2, false, 0.001),
];

/// Binary objects (0x0F..=0x2D) are booleans.
fn bthome_binary(id: u8) -> bool {
    (0x0F..=0x2D).contains(&id)
}

pub fn bthome(d: &[u8]) -> Result<Props, DecodeError> {
    let (&info, mut rest) = d.split_first().ok_or(DecodeError::Length {
        format: "BTHome",
        len: 0,
    })?;
    if info & 0x01 != 0 {
        return Err(DecodeError::Encrypted);
    }
    let version = info >> 5;
    if version != 2 {
        return Err(DecodeError::Version(version));
    }
    let mut out = Props::new();
    while let Some((&id, tail)) = rest.split_first() {
        let Some(&(_, name, len, signed, factor)) = BTHOME.iter().find(|o| o.0 == id) else {
            // What was decoded before is still good; the caller decides whether to use it.
            return if out.is_empty() {
                Err(DecodeError::UnknownObject(id))
            } else {
                Ok(out)
            };
        };
        if tail.len() < len {
            return Err(DecodeError::Length {
                format: "BTHome",
                len: d.len(),
            });
        }
        let raw = &tail[..len];
        let mut u: u64 = 0;
        for (i, b) in raw.iter().enumerate() {
            u |= u64::from(*b) << (8 * i);
        }
        let v = if bthome_binary(id) {
            Value::Bool(u != 0)
        } else if signed {
            let shift = 64 - 8 * len as u32;
            let i = ((u << shift) as i64) >> shift;
            number(i as f64, factor)
        } else {
            number(u as f64, factor)
        };
        // Repeated ids (two temperatures) get a numbered name.
        let mut key = name.to_string();
        let mut n = 2;
        while out.contains_key(&key) {
            key = format!("{name}_{n}");
            n += 1;
        }
        out.insert(key, v);
        rest = &tail[len..];
    }
    Ok(out)
}

fn number(x: f64, factor: f64) -> Value {
    if factor == 1.0 && x >= 0.0 {
        Value::UInt(x as u64)
    } else if factor == 1.0 {
        Value::Int(x as i64)
    } else {
        Value::Float(round(x * factor, factor))
    }
}

/// Round away binary noise: to the factor's decimal places.
fn round(x: f64, factor: f64) -> f64 {
    let places = (-factor.log10()).ceil().max(0.0) as i32 + 1;
    let m = 10f64.powi(places);
    (x * m).round() / m
}

pub fn ruuvi(d: &[u8]) -> Result<Props, DecodeError> {
    let Some(&fmt) = d.first() else {
        return Err(DecodeError::Length {
            format: "Ruuvi",
            len: 0,
        });
    };
    if fmt != 5 {
        return Err(DecodeError::RuuviFormat(fmt));
    }
    if d.len() < 24 {
        return Err(DecodeError::Length {
            format: "Ruuvi RAWv2",
            len: d.len(),
        });
    }
    let be16 = |i: usize| u16::from_be_bytes([d[i], d[i + 1]]);
    let mut out = Props::new();
    let t = be16(1) as i16;
    if t != i16::MIN {
        out.insert(
            "temperature".into(),
            Value::Float(round(f64::from(t) * 0.005, 0.005)),
        );
    }
    let h = be16(3);
    if h != 0xFFFF {
        out.insert(
            "humidity".into(),
            Value::Float(round(f64::from(h) * 0.0025, 0.0025)),
        );
    }
    let p = be16(5);
    if p != 0xFFFF {
        out.insert("pressure".into(), Value::UInt(u64::from(p) + 50_000));
    }
    for (name, i) in [
        ("acceleration_x", 7),
        ("acceleration_y", 9),
        ("acceleration_z", 11),
    ] {
        let a = be16(i) as i16;
        if a != i16::MIN {
            out.insert(
                name.into(),
                Value::Float(round(f64::from(a) / 1000.0, 0.001)),
            );
        }
    }
    let power = be16(13);
    if power >> 5 != 0x7FF {
        out.insert(
            "battery_voltage".into(),
            Value::Float(round(f64::from((power >> 5) + 1600) / 1000.0, 0.001)),
        );
    }
    if power & 0x1F != 0x1F {
        out.insert(
            "tx_power".into(),
            Value::Int(-40 + 2 * i64::from(power & 0x1F)),
        );
    }
    if d[15] != 0xFF {
        out.insert("movement_counter".into(), Value::UInt(u64::from(d[15])));
    }
    let seq = be16(16);
    if seq != 0xFFFF {
        out.insert("measurement_sequence".into(), Value::UInt(u64::from(seq)));
    }
    Ok(out)
}

pub fn atc(d: &[u8]) -> Result<Props, DecodeError> {
    let mut out = Props::new();
    match d.len() {
        13 => {
            // ATC1441: MAC (6, big-endian), temperature i16 BE 0.1 °C, humidity u8 %,
            // battery u8 %, battery mV u16 BE, frame counter u8.
            let t = i16::from_be_bytes([d[6], d[7]]);
            out.insert(
                "temperature".into(),
                Value::Float(round(f64::from(t) * 0.1, 0.1)),
            );
            out.insert("humidity".into(), Value::UInt(u64::from(d[8])));
            out.insert("battery".into(), Value::UInt(u64::from(d[9])));
            out.insert(
                "battery_voltage".into(),
                Value::Float(f64::from(u16::from_be_bytes([d[10], d[11]])) / 1000.0),
            );
            out.insert("counter".into(), Value::UInt(u64::from(d[12])));
        }
        15 => {
            // pvvx: MAC (6, little-endian), temperature i16 LE 0.01 °C, humidity u16 LE
            // 0.01 %, battery mV u16 LE, battery u8 %, counter u8, flags u8.
            let t = i16::from_le_bytes([d[6], d[7]]);
            out.insert(
                "temperature".into(),
                Value::Float(round(f64::from(t) * 0.01, 0.01)),
            );
            out.insert(
                "humidity".into(),
                Value::Float(round(
                    f64::from(u16::from_le_bytes([d[8], d[9]])) * 0.01,
                    0.01,
                )),
            );
            out.insert(
                "battery_voltage".into(),
                Value::Float(f64::from(u16::from_le_bytes([d[10], d[11]])) / 1000.0),
            );
            out.insert("battery".into(), Value::UInt(u64::from(d[12])));
            out.insert("counter".into(), Value::UInt(u64::from(d[13])));
        }
        len => {
            return Err(DecodeError::Length {
                format: "ATC/pvvx",
                len,
            })
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect()
    }

    #[test]
    fn ruuvi_rawv2_official_test_vectors() {
        // docs.ruuvi.com, data format 5, "valid data" test vector.
        let p = ruuvi(&hex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")).unwrap_or_default();
        assert_eq!(p["temperature"], Value::Float(24.3));
        assert_eq!(p["pressure"], Value::UInt(100_044));
        assert_eq!(p["humidity"], Value::Float(53.49));
        assert_eq!(p["acceleration_x"], Value::Float(0.004));
        assert_eq!(p["acceleration_y"], Value::Float(-0.004));
        assert_eq!(p["acceleration_z"], Value::Float(1.036));
        assert_eq!(p["tx_power"], Value::Int(4));
        assert_eq!(p["battery_voltage"], Value::Float(2.977));
        assert_eq!(p["movement_counter"], Value::UInt(66));
        assert_eq!(p["measurement_sequence"], Value::UInt(205));
        // "maximum values" vector
        let p = ruuvi(&hex("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F")).unwrap_or_default();
        assert_eq!(p["temperature"], Value::Float(163.835));
        assert_eq!(p["pressure"], Value::UInt(115_534));
        assert_eq!(p["humidity"], Value::Float(163.835));
        assert_eq!(p["battery_voltage"], Value::Float(3.646));
        assert_eq!(p["tx_power"], Value::Int(20));
        // "invalid values" vector: everything not available is left out
        let p = ruuvi(&hex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF")).unwrap_or_default();
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            ruuvi(&hex("03291A1ECE1E")),
            Err(DecodeError::RuuviFormat(3))
        );
        assert!(ruuvi(&hex("0512FC")).is_err());
    }

    #[test]
    fn bthome_v2_examples_from_the_format_spec() {
        // Temperature 25.00 °C and humidity 50.55 %.
        let p = bthome(&hex("40 02 C4 09 03 BF 13")).unwrap_or_default();
        assert_eq!(p["temperature"], Value::Float(25.0));
        assert_eq!(p["humidity"], Value::Float(50.55));
        // Packet id, battery 97 %, negative temperature, pressure 1008.83 hPa, a window open.
        let p = bthome(&hex("40 00 0C 01 61 02 1A FE 04 13 8A 01 2D 01")).unwrap_or_default();
        assert_eq!(p["packet_id"], Value::UInt(12));
        assert_eq!(p["battery"], Value::UInt(97));
        assert_eq!(p["temperature"], Value::Float(-4.86));
        assert_eq!(p["pressure"], Value::Float(1008.83));
        assert_eq!(p["window"], Value::Bool(true));
        // Voltage 3.074 V, power 1.23 W... then an unknown id: what came before is kept.
        let p = bthome(&hex("40 0C 02 0C 0B 7B 00 00 F0 01")).unwrap_or_default();
        assert_eq!(p["voltage"], Value::Float(3.074));
        assert_eq!(p["power"], Value::Float(1.23));
        assert_eq!(bthome(&hex("41 02 C4 09")), Err(DecodeError::Encrypted));
        assert_eq!(bthome(&hex("20 02 C4 09")), Err(DecodeError::Version(1)));
        assert!(bthome(&hex("40 02 C4")).is_err(), "truncated");
        assert_eq!(
            bthome(&hex("40 F0 01")),
            Err(DecodeError::UnknownObject(0xF0))
        );
    }

    #[test]
    fn atc1441_and_pvvx_thermometers() {
        // ATC1441: A4:C1:38:01:02:03, 23.4 °C, 56 %, 89 %, 2953 mV, frame 7.
        let p = atc(&hex("A4C138010203 00EA 38 59 0B89 07")).unwrap_or_default();
        assert_eq!(p["temperature"], Value::Float(23.4));
        assert_eq!(p["humidity"], Value::UInt(56));
        assert_eq!(p["battery"], Value::UInt(89));
        assert_eq!(p["battery_voltage"], Value::Float(2.953));
        // pvvx: -3.25 °C, 45.67 %, 3001 mV, 100 %, counter 200, flags 0.
        let p = atc(&hex("030201 38C1A4 BBFE D711 B90B 64 C8 00")).unwrap_or_default();
        assert_eq!(p["temperature"], Value::Float(-3.25));
        assert_eq!(p["humidity"], Value::Float(45.67));
        assert_eq!(p["battery_voltage"], Value::Float(3.001));
        assert_eq!(p["battery"], Value::UInt(100));
        assert_eq!(p["counter"], Value::UInt(200));
        assert!(atc(&hex("A4C138")).is_err());
    }

    #[test]
    fn auto_picks_what_the_advertisement_carries() {
        let sd = BTreeMap::from([(BTHOME_UUID16, hex("40 02 C4 09"))]);
        let md = BTreeMap::new();
        assert!(matches!(decode(Format::Auto, &sd, &md), Some(Ok(_))));
        assert!(
            decode(Format::Ruuvi, &sd, &md).is_none(),
            "not in this format"
        );
    }
}
