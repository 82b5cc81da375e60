//! Go-style duration strings (`30s`, `500ms`, `1m30s`, `2h`), as Kubernetes users write them in
//! flags and in the CRD. Strict on purpose: a typo must be an error, not a surprising duration.

use std::time::Duration;

/// Parses a Go-style duration: one or more `<number><unit>` parts, units `ns`, `us` (or `µs`),
/// `ms`, `s`, `m`, `h`, numbers with an optional decimal fraction. A bare `0` is accepted.
/// Signs, spaces, a missing unit and values past `u64` nanoseconds are refused.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    if input.is_empty() {
        return Err("empty duration".to_string());
    }
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(format!("invalid duration {input:?}: expected a number"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "invalid duration {input:?}: missing unit (ns, us, ms, s, m, h)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {input:?}: unknown unit {other:?}"
                ));
            }
        };
        total = total
            .checked_add(
                scaled(number, nanos_per_unit)
                    .ok_or_else(|| format!("invalid duration {input:?}"))?,
            )
            .ok_or_else(|| format!("invalid duration {input:?}: too large"))?;
        rest = next;
    }
    let nanos =
        u64::try_from(total).map_err(|_| format!("invalid duration {input:?}: too large"))?;
    Ok(Duration::from_nanos(nanos))
}

/// `number × unit` in nanoseconds, exact for the integer part and truncated for the fraction
/// (as Go does). None for a malformed number or an overflow.
fn scaled(number: &str, unit: u128) -> Option<u128> {
    let (int, frac) = match number.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (number, ""),
    };
    // "." alone and a second dot are malformed; "1." and ".5" are valid as in Go.
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let mut value: u128 = 0;
    for digit in int.bytes() {
        value = value
            .checked_mul(10)?
            .checked_add(u128::from(digit - b'0'))?;
        if value > u128::from(u64::MAX) {
            return None;
        }
    }
    let mut nanos = value.checked_mul(unit)?;
    let mut scale = unit;
    for digit in frac.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        nanos = nanos.checked_add(u128::from(digit - b'0') * scale)?;
    }
    Some(nanos)
}

/// Formats a duration the way it was most likely written (`30s`, `500ms`, `1.5s`), for messages
/// and docs.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        "0s".to_string()
    } else if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("1.5s", Duration::from_millis(1500)),
            ("1.s", Duration::from_secs(1)),
            (".5s", Duration::from_millis(500)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("0.0000000019s", Duration::from_nanos(1)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("250ns", Duration::from_nanos(250)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_anything_else() {
        for input in [
            "",
            "s",
            "30",
            "-1s",
            "+1s",
            " 1s",
            "1s ",
            "1 s",
            "1S",
            "1sec",
            "1d",
            "1.2.3s",
            ".s",
            "1s2",
            "ms",
            "1e3s",
            "18446744073709551616ns",
            "5124096h",
            "٣s",
        ] {
            assert!(parse_duration(input).is_err(), "{input:?} was accepted");
        }
    }

    #[test]
    fn formats_round_trip() {
        for input in ["0s", "30s", "500ms", "10us", "7ns", "90s"] {
            let parsed = parse_duration(input).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(input in "\\PC{0,24}") {
            let _ = parse_duration(&input);
        }

        #[test]
        fn integer_seconds_parse_exactly(secs in 0u64..10_000_000) {
            proptest::prop_assert_eq!(parse_duration(&format!("{secs}s")), Ok(Duration::from_secs(secs)));
        }
    }
}
