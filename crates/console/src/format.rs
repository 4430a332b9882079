//! Numbers, sizes, rates and times as the pages show them.

use chrono::{DateTime, Utc};

/// `1.5 KiB`, `12 MiB`, `830 B`.
pub fn bytes(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value.abs() >= 100.0 {
        format!("{value:.0} {}", units[unit])
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// `0`, `3.2`, `41`, `1.2k`.
pub fn rate(per_second: f64) -> String {
    if per_second.abs() < 0.05 {
        "0".to_owned()
    } else if per_second.abs() < 10.0 {
        format!("{per_second:.1}")
    } else if per_second.abs() < 10_000.0 {
        format!("{per_second:.0}")
    } else {
        format!("{:.1}k", per_second / 1000.0)
    }
}

/// Milliseconds since the epoch as `2026-12-03 08:41:07.123Z`.
pub fn millis(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |at| at.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string(),
    )
}

/// A PostgreSQL LSN as PostgreSQL writes it: `16/B374D848`.
pub fn lsn(value: i64) -> String {
    let value = value as u64;
    format!("{:X}/{:X}", value >> 32, value & 0xFFFF_FFFF)
}

/// Bytes as lower-case hex, space every 4 bytes.
pub fn hex(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 2 + data.len() / 4);
    for (i, b) in data.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push(' ');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(830), "830 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(200 * 1024 * 1024), "200 MiB");
        assert_eq!(rate(0.01), "0");
        assert_eq!(rate(3.25), "3.2");
        assert_eq!(rate(1363.4), "1363");
        assert_eq!(lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(hex(&[0, 1, 0xab, 0xff, 0x10]), "0001abff 10");
        assert_eq!(millis(0), "1970-01-01 00:00:00.000Z");
    }
}
