//! Durations (`250ms`, `2s`, `5m`, `1h`, `1.5s`) and sizes (`16KiB`, `1MiB`, plain bytes).
//!
//! A duration always needs its unit: a bare `30` is ambiguous (seconds? milliseconds?)
//! and is rejected. A bare integer size means bytes.

use std::time::Duration;

const NANOS_PER_MS: u128 = 1_000_000;
const NANOS_PER_S: u128 = 1_000 * NANOS_PER_MS;

/// Splits `12.5ms` into (`12.5`, `ms`), allowing spaces between number and unit.
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

/// Parses a duration string: a non-negative decimal number and one of `ms`, `s`, `m`, `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!("duration `{s}` must not be negative"));
    }
    let (number, unit) = split_number(s);
    if number.is_empty() {
        return Err(format!("`{s}` is not a duration; write e.g. `250ms`, `2s`, `5m` or `1h`"));
    }
    let unit_nanos = match unit {
        "ms" => NANOS_PER_MS,
        "s" => NANOS_PER_S,
        "m" => 60 * NANOS_PER_S,
        "h" => 3_600 * NANOS_PER_S,
        "" => return Err(format!("`{s}` needs a unit, e.g. `{s}s`")),
        other => return Err(format!("unknown duration unit `{other}` in `{s}`; use ms, s, m or h")),
    };
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() || frac_part.contains('.') || (number.contains('.') && frac_part.is_empty()) {
        return Err(format!("`{s}` is not a valid number"));
    }
    let too_long = || format!("duration `{s}` is too long");
    let int: u128 = int_part.parse().map_err(|_| too_long())?;
    let mut nanos = int.checked_mul(unit_nanos).ok_or_else(too_long)?;
    // The fraction is exact to the nanosecond: digits beyond that are dropped.
    let mut scale = unit_nanos;
    for digit in frac_part.bytes() {
        scale /= 10;
        nanos += u128::from(digit - b'0') * scale;
    }
    let secs = u64::try_from(nanos / NANOS_PER_S).map_err(|_| too_long())?;
    // The remainder is below 10^9, so it fits in u32.
    Ok(Duration::new(secs, (nanos % NANOS_PER_S) as u32))
}

/// Parses a size: a non-negative integer in bytes, optionally with a unit: `B`, `KB`,
/// `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!("size `{s}` must not be negative"));
    }
    let (number, unit) = split_number(s);
    if number.is_empty() {
        return Err(format!("`{s}` is not a size; write bytes or e.g. `16KiB`, `1MiB`"));
    }
    if number.contains('.') {
        return Err(format!("size `{s}` must be a whole number; use a smaller unit"));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit `{unit}` in `{s}`; use B, KB, MB, GB, KiB, MiB or GiB")),
    };
    let too_large = || format!("size `{s}` is too large");
    let n: u64 = number.parse().map_err(|_| too_large())?;
    n.checked_mul(multiplier).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25m"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 10 s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn duration_errors() {
        assert_eq!(parse_duration("30").unwrap_err(), "`30` needs a unit, e.g. `30s`");
        assert!(parse_duration("1.5").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown duration unit `d`"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1..5s").is_err());
        assert!(parse_duration("1.s").is_err());
        assert!(parse_duration(".5s").is_err());
        assert!(parse_duration("99999999999999999999999999h").unwrap_err().contains("too long"));
        assert!(parse_duration("9999999999999999999h").unwrap_err().contains("too long"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("16KB"), Ok(16_000));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("2 GB"), Ok(2_000_000_000));
    }

    #[test]
    fn size_errors() {
        assert!(parse_size("-1").unwrap_err().contains("negative"));
        assert!(parse_size("1.5MiB").unwrap_err().contains("whole number"));
        assert!(parse_size("10XB").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("MiB").unwrap_err().contains("not a size"));
        assert!(parse_size("18446744073709551615").is_ok());
        assert!(parse_size("18446744073709551616").unwrap_err().contains("too large"));
        assert!(parse_size("17179869184GiB").unwrap_err().contains("too large"));
    }
}
