//! Go `time.ParseDuration` syntax (`30s`, `1m30s`, `1.5h`, `500ms`), used by HEALTHCHECK flags.

/// Parses a Go duration into nanoseconds. Negative durations and overflow are rejected.
pub(crate) fn parse_go_duration(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return None;
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after_unit) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        total = total.checked_add(whole.checked_mul(nanos_per_unit)?)?;
        let mut scale = nanos_per_unit;
        for digit in fraction.chars() {
            scale /= 10;
            total += u128::from(digit.to_digit(10)?) * scale;
        }
        rest = after_unit;
    }
    u64::try_from(total).ok().filter(|n| *n <= i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_go_duration;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_go_duration("30s"), Some(30_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_go_duration("2h"), Some(7_200_000_000_000));
        assert_eq!(parse_go_duration("0"), Some(0));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in ["", "10", "5x", "-1s", "s", "1..5s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }
}
