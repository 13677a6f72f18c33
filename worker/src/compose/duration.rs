//! Compose's durations: Go's (`time.ParseDuration`, through `berth-consul`'s one parser) plus
//! bare seconds.

use std::time::Duration;

/// Compose/Go durations: `1m30s`, `10s`, `500ms`, `1h`, `2us`, `3ns`; a bare number is seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    berth_consul::duration::parse_go_duration(s).ok_or_else(|| format!("invalid duration {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_and_bare_seconds() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2us"), Ok(Duration::from_micros(2)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }
}
