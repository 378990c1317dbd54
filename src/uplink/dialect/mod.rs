//! Platform dialects: pure translation between domain events and (topic, payload), one file per
//! platform. No I/O here, so every message can be tested byte for byte against the platform's
//! documentation. Shared helpers (UTC calendar formatting) live in this file.

pub mod iotda;

/// UTC calendar fields of a Unix time in milliseconds: (year, month, day, hour, minute, second, ms).
pub fn utc(ts_ms: u64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = (ts_ms / 1000) as i64;
    let ms = (ts_ms % 1000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60, ms)
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn calendar() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0, 0));
        // 2025-04-14T01:02:03.456Z
        assert_eq!(utc(1_744_592_523_456), (2025, 4, 14, 1, 2, 3, 456));
        // leap day 2024-02-29T23:59:59Z
        assert_eq!(utc(1_709_251_199_000), (2024, 2, 29, 23, 59, 59, 0));
    }
}
