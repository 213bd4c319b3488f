//! Numbers and durations short enough for a table cell.

/// 999, 1.2k, 34.5M, 1.0G: three significant figures at most.
pub fn count(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ];
    scaled(n, &UNITS).unwrap_or_else(|| n.to_string())
}

/// Bytes in binary units: 512B, 1.5K, 20M.
pub fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    scaled(n, &UNITS).unwrap_or_else(|| format!("{n}B"))
}

/// `n` in the largest of `units` (largest first) it reaches, with one
/// decimal below 100 of it; None below the smallest unit.
fn scaled(n: u64, units: &[(u64, &str)]) -> Option<String> {
    let &(size, unit) = units.iter().find(|(size, _)| n >= *size)?;
    let v = n as f64 / size as f64;
    Some(if v >= 100.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    })
}

/// A rate: "-" when unknown, else one decimal below 100.
pub fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r < 100.0 => format!("{r:.1}"),
        Some(r) => count(r.round() as u64),
    }
}

/// 850ms, 12.3s, 4m05s, 3h12m, 2d04h; "-" when unknown.
pub fn duration_ms(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_durations() {
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234), "1.2k");
        assert_eq!(count(123_456), "123k");
        assert_eq!(count(34_500_000), "34.5M");
        assert_eq!(count(u64::MAX), "18446744T");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(rate(None), "-");
        assert_eq!(rate(Some(49.96)), "50.0");
        assert_eq!(rate(Some(12_345.0)), "12.3k");
        assert_eq!(duration_ms(Some(850)), "850ms");
        assert_eq!(duration_ms(Some(12_340)), "12.3s");
        assert_eq!(duration_ms(Some(245_000)), "4m05s");
        assert_eq!(duration_ms(Some(3 * 3_600_000 + 12 * 60_000)), "3h12m");
        assert_eq!(duration_ms(Some(2 * 86_400_000 + 4 * 3_600_000)), "2d04h");
        assert_eq!(duration_ms(None), "-");
    }
}
