//! Parsing and printing sizes and other small values of the command line.

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024; KiB etc. also work).
pub(crate) fn parse_size(input: &str) -> Result<u64, String> {
    let text = input.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{input:?} is not a size"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown size unit {other:?} in {input:?}")),
    };
    number
        .checked_shl(shift)
        .filter(|v| v >> shift == number)
        .ok_or_else(|| format!("{input:?} is too large"))
}

/// Parses a rate in bytes per second: a size, optionally followed by /s (50M, 1G/s).
pub(crate) fn parse_rate(input: &str) -> Result<u64, String> {
    let text = input.trim();
    let size = text
        .strip_suffix("/s")
        .or_else(|| text.strip_suffix("/S"))
        .unwrap_or(text);
    match parse_size(size)? {
        0 => Err(format!(
            "a rate of {input:?} would never finish; give one above 0"
        )),
        rate => Ok(rate),
    }
}

/// Parses a duration: a number with s, m, h or d (30m, 12h, 7d).
pub(crate) fn parse_duration(input: &str) -> Result<std::time::Duration, String> {
    let text = input.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{input:?} is not a duration such as 30m, 12h or 7d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{input:?} needs a unit: s, m, h or d")),
    };
    number
        .checked_mul(seconds)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{input:?} is too long"))
}

/// Parses a point in time: RFC 3339, or `now`.
pub(crate) fn parse_time(input: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if input == "now" {
        return Ok(chrono::Utc::now());
    }
    chrono::DateTime::parse_from_rfc3339(input)
        .map(|time| time.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{input:?} is not a time as 2026-12-24T00:00:00Z or now: {e}"))
}

/// Parses an architecture: x86_64 or aarch64.
pub(crate) fn parse_architecture(input: &str) -> Result<blockyard_store::Architecture, String> {
    input
        .parse()
        .map_err(|e: blockyard_store::StoreError| e.to_string())
}

/// Parses a boot mode: uefi or bios.
pub(crate) fn parse_boot_mode(input: &str) -> Result<blockyard_store::BootMode, String> {
    input
        .parse()
        .map_err(|e: blockyard_store::StoreError| e.to_string())
}

/// Parses a `key=value` tag.
pub(crate) fn parse_tag(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("tag {input:?} is not of the form key=value")),
    }
}

/// Parses a percentage from 0 to 100.
pub(crate) fn parse_percent(input: &str) -> Result<f64, String> {
    let value: f64 = input
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{input:?} is not a number"))?;
    if (0.0..=100.0).contains(&value) && value > 0.0 {
        Ok(value)
    } else {
        Err(format!(
            "{input} is not a percentage above 0 and at most 100"
        ))
    }
}

/// Prints bytes for people: 1.5 GiB.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn rates_are_sizes_per_second_and_never_zero() {
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("1G/s"), Ok(1 << 30));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(
            parse_duration("7d"),
            Ok(std::time::Duration::from_secs(7 * 86_400))
        );
        assert_eq!(parse_duration("0s"), Ok(std::time::Duration::ZERO));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn tags_need_a_key() {
        assert_eq!(parse_tag("os=debian"), Ok(("os".into(), "debian".into())));
        assert_eq!(parse_tag("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_tag("=x").is_err());
        assert!(parse_tag("novalue").is_err());
    }

    #[test]
    fn byte_counts_print_in_binary_units() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
