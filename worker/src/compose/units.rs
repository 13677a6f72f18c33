//! Compose's value grammar for resources: byte sizes (`512m`, `1g`, `1.5GB`, `100`, binary
//! multiples as in Docker's `RAMInBytes`) and CPU counts (`0.5`, `2`).

/// Parses a byte size: a number (fractions allowed), optional space, an optional unit `b`, `k`,
/// `m`, `g`, `t` or `p` (powers of 1024, any case), optionally followed by `i` and/or `b`.
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not a size (such as 512m, 1g, 1.5GB or a byte count)");
    let s = text.trim().to_ascii_lowercase();
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let unit = unit.trim_start();
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bytes = value * (1u64 << shift) as f64;
    if bytes >= i64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as i64)
}

/// Parses a CPU count (`1.5`) into billionths of a CPU, as Docker's `NanoCpus`.
pub fn parse_cpus(text: &str) -> Result<i64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|c| c.is_finite() && *c >= 0.0 && *c < 1e9)
        .map(|c| (c * 1e9).round() as i64)
        .ok_or_else(|| format!("{text:?} is not a CPU count (such as 0.5 or 2)"))
}

/// Formats bytes the way people write them in compose files (`512m`, `1.5g`, `100`).
pub fn format_bytes(bytes: i64) -> String {
    for (shift, unit) in [(30, "g"), (20, "m"), (10, "k")] {
        let size = 1i64 << shift;
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if bytes % size == 0 {
                format!("{}{unit}", bytes / size)
            } else {
                format!("{}{unit}", (v * 100.0).round() / 100.0)
            };
        }
    }
    bytes.to_string()
}

/// Formats billionths of a CPU as a CPU count (`1.5`).
pub fn format_cpus(nano: i64) -> String {
    let v = nano as f64 / 1e9;
    format!("{}", (v * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        let cases: &[(&str, Option<i64>)] = &[
            ("100", Some(100)),
            ("100b", Some(100)),
            ("64k", Some(64 << 10)),
            ("64kb", Some(64 << 10)),
            ("512m", Some(512 << 20)),
            ("512M", Some(512 << 20)),
            ("512MiB", Some(512 << 20)),
            ("1g", Some(1 << 30)),
            ("1.5GB", Some(3 << 29)),
            ("1.5 gb", Some(3 << 29)),
            ("2t", Some(2 << 40)),
            ("0", Some(0)),
            ("lots", None),
            ("", None),
            ("1.2.3m", None),
            (".5g", None),
            ("-1g", None),
            ("1x", None),
            ("1gg", None),
            ("9999999p", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bytes(text).ok(), *want, "{text:?}");
        }
        assert_eq!(format_bytes(512 << 20), "512m");
        assert_eq!(format_bytes(3 << 29), "1.5g");
        assert_eq!(format_bytes(100), "100");
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(parse_cpus("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_cpus("0.25"), Ok(250_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("many").is_err());
        assert!(parse_cpus("NaN").is_err());
        assert_eq!(format_cpus(1_500_000_000), "1.5");
    }
}
