//! Go-style durations as users write them in flags and in the CRD: no panic; only the documented
//! grammar is accepted; a duration formatted back parses to itself; and a duration written in
//! two parts is the sum of the parts (each part truncated alone, as the parser promises).
#![no_main]

use std::time::Duration;

use asyncpool_contract::duration::{format_duration, parse_duration};
use libfuzzer_sys::fuzz_target;

/// One `<number><unit>` part: the digits before and after the dot, and the unit in nanoseconds.
struct Part<'a> {
    whole: &'a str,
    fraction: Option<&'a str>,
    unit: u128,
}

const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// The documented grammar, written independently of the parser: `0`, or one or more
/// `<number><unit>` where a number is digits with at most one dot (not the dot alone). None when
/// `text` does not follow it.
fn parts(text: &str) -> Option<Vec<Part<'_>>> {
    if text == "0" {
        return Some(Vec::new());
    }
    if text.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (number, after) = rest.split_at(number_len);
        let (whole, fraction) = match number.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (number, None),
        };
        if number.is_empty() || number == "." || fraction.is_some_and(|f| f.contains('.')) {
            return None;
        }
        // The unit runs to the next number; "ms" and "m" are told apart by what follows.
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let (_, unit) = UNITS.into_iter().find(|(name, _)| *name == unit)?;
        parts.push(Part {
            whole,
            fraction,
            unit,
        });
        rest = next;
    }
    Some(parts)
}

/// Bounds on a duration in nanoseconds from its parts, saturating: the integer parts alone
/// (exact), and with each fraction counted as a whole unit more (past any truncation).
fn bounds(parts: &[Part<'_>]) -> (u128, u128) {
    let mut low: u128 = 0;
    let mut high: u128 = 0;
    for part in parts {
        // Digits only, so parsing fails on overflow alone: saturate.
        let whole = if part.whole.is_empty() {
            0
        } else {
            part.whole.parse::<u128>().unwrap_or(u128::MAX)
        };
        let exact = whole.saturating_mul(part.unit);
        low = low.saturating_add(exact);
        let fraction = part.fraction.is_some_and(|f| f.bytes().any(|b| b != b'0'));
        high = high.saturating_add(exact.saturating_add(if fraction { part.unit } else { 0 }));
    }
    (low, high)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_duration(text);
    match (&parsed, parts(text)) {
        (Ok(duration), Some(parts)) => {
            let (low, high) = bounds(&parts);
            let nanos = duration.as_nanos();
            assert!(
                low <= nanos && nanos <= high,
                "{text:?} parsed as {nanos} ns, outside [{low}, {high}]"
            );
        }
        (Ok(duration), None) => {
            panic!("{text:?} is not in the grammar, yet parsed as {duration:?}")
        }
        // Refused only when it is too large.
        (Err(error), Some(parts)) => assert!(
            bounds(&parts).1 > u128::from(u64::MAX),
            "{text:?} refused ({error})"
        ),
        (Err(_), None) => {}
    }
    if let Ok(duration) = parsed {
        let formatted = format_duration(duration);
        assert_eq!(
            parse_duration(&formatted),
            Ok(duration),
            "{text:?} formats as {formatted:?}"
        );
    }
    // Splitting at every character is quadratic: short inputs only, which is what durations are.
    if text.len() > 64 {
        return;
    }
    for (at, _) in text.char_indices().skip(1) {
        let (first, second) = text.split_at(at);
        // A trailing bare "0" is no part: "5s" + "0" is "5s0", a number without a unit.
        if second == "0" {
            continue;
        }
        let (Ok(a), Ok(b)) = (parse_duration(first), parse_duration(second)) else {
            continue;
        };
        let sum = a.as_nanos() + b.as_nanos();
        match u64::try_from(sum) {
            Ok(nanos) => assert_eq!(
                parsed,
                Ok(Duration::from_nanos(nanos)),
                "{first:?} + {second:?}"
            ),
            Err(_) => assert!(parsed.is_err(), "{text:?} past u64 nanoseconds accepted"),
        }
    }
});
