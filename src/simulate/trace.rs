//! Load traces: one request per row, when it arrives and how long it holds a worker slot.
//!
//! Two file forms are read, told apart by their header:
//! - `arrival_s,service_s`: seconds from the trace's start, and seconds in the app;
//! - `TIMESTAMP,ContextTokens,GeneratedTokens` (the Azure LLM inference traces): arrival times
//!   as timestamps, and a service time modelled from the token counts by a [`TokenModel`].
//!
//! Bad input is refused with the line it is on; nothing is guessed.

use std::io::BufRead;

/// One request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Seconds from the trace's start.
    pub arrival: f64,
    /// Seconds the request holds a worker slot once admitted.
    pub service: f64,
}

/// A first arrival later than this is a clock time by mistake, not a quiet start: a week.
const LONGEST_LEADING_SILENCE: f64 = 7.0 * 24.0 * 3600.0;

/// The latest arrival a trace may have: 31 days. The policies look at the pool every second of
/// simulated time, so a trace's span, not only its rows, sets how long a run takes.
pub const LONGEST_TRACE: f64 = 31.0 * 24.0 * 3600.0;

/// The longest service time a request may have: a day.
pub const LONGEST_SERVICE: f64 = 24.0 * 3600.0;

/// A non-empty list of requests in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    requests: Vec<Request>,
}

/// Why a trace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("the trace has no requests")]
    Empty,
    #[error(
        "line {line}: unknown header {header:?}: expected `arrival_s,service_s` or \
         `TIMESTAMP,ContextTokens,GeneratedTokens`"
    )]
    Header { line: usize, header: String },
    #[error("reading the trace: {0}")]
    Io(#[from] std::io::Error),
}

/// How long an LLM request holds its slot, from its token counts:
/// `overhead + context × per_context_token + generated × per_generated_token`
/// (a fixed cost, the prefill of the prompt, the decode of the reply).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenModel {
    pub overhead: f64,
    pub per_context_token: f64,
    pub per_generated_token: f64,
}

impl Default for TokenModel {
    /// An async gateway in front of a mid-sized model: 200 ms fixed, 0.1 ms per prompt token,
    /// 30 ms per generated token (about 33 tokens a second).
    fn default() -> Self {
        Self {
            overhead: 0.2,
            per_context_token: 0.0001,
            per_generated_token: 0.03,
        }
    }
}

impl TokenModel {
    pub fn service_seconds(&self, context_tokens: u64, generated_tokens: u64) -> f64 {
        self.overhead
            + self.per_context_token * context_tokens as f64
            + self.per_generated_token * generated_tokens as f64
    }
}

impl Trace {
    /// A trace from requests already in memory (generators, tests). The same rules as for a file.
    pub fn new(requests: Vec<Request>) -> Result<Self, TraceError> {
        for (index, request) in requests.iter().enumerate() {
            let previous = index.checked_sub(1).map(|i| requests[i].arrival);
            check_request(*request, previous).map_err(|problem| TraceError::Line {
                line: index + 1,
                problem,
            })?;
        }
        if requests.is_empty() {
            return Err(TraceError::Empty);
        }
        Ok(Self { requests })
    }

    /// Reads either file form (see the module docs).
    pub fn read(input: impl BufRead, tokens: &TokenModel) -> Result<Self, TraceError> {
        let mut format = None;
        let mut requests = Vec::new();
        let mut first_timestamp = None;
        for (index, line) in input.lines().enumerate() {
            let number = index + 1;
            let line = line?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let at = |problem: String| TraceError::Line {
                line: number,
                problem,
            };
            let format = match format {
                Some(format) => format,
                None => match Format::from_header(&fields) {
                    Some(detected) => {
                        format = Some(detected);
                        continue;
                    }
                    // No header: plain seconds.
                    None if fields.len() == 2
                        && fields.iter().all(|f| f.parse::<f64>().is_ok()) =>
                    {
                        *format.insert(Format::Seconds)
                    }
                    None => {
                        return Err(TraceError::Header {
                            line: number,
                            header: line.to_owned(),
                        });
                    }
                },
            };
            let request = match format {
                Format::Seconds => {
                    let request = seconds_row(&fields).map_err(at)?;
                    if requests.is_empty() && request.arrival > LONGEST_LEADING_SILENCE {
                        return Err(at(format!(
                            "the first arrival is at {} s: arrivals are seconds from the trace's \
                             start, and this looks like a clock time (subtract the first arrival)",
                            request.arrival
                        )));
                    }
                    request
                }
                Format::Tokens => {
                    let (timestamp, context, generated) = token_row(&fields).map_err(at)?;
                    let start = *first_timestamp.get_or_insert(timestamp);
                    Request {
                        arrival: timestamp - start,
                        service: tokens.service_seconds(context, generated),
                    }
                }
            };
            check_request(request, requests.last().map(|r: &Request| r.arrival)).map_err(at)?;
            requests.push(request);
        }
        if requests.is_empty() {
            return Err(TraceError::Empty);
        }
        Ok(Self { requests })
    }

    pub fn requests(&self) -> &[Request] {
        &self.requests
    }

    /// When the last request would finish if none waited: the end of the work.
    pub fn end(&self) -> f64 {
        self.requests
            .iter()
            .map(|r| r.arrival + r.service)
            .fold(0.0, f64::max)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Seconds,
    Tokens,
}

impl Format {
    fn from_header(fields: &[&str]) -> Option<Self> {
        let lower: Vec<String> = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
        match lower.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["arrival_s", "service_s"] => Some(Format::Seconds),
            ["timestamp", "contexttokens", "generatedtokens"] => Some(Format::Tokens),
            _ => None,
        }
    }
}

fn check_request(request: Request, previous_arrival: Option<f64>) -> Result<(), String> {
    if !(request.arrival.is_finite() && request.arrival >= 0.0) {
        return Err(format!(
            "arrival {} is not a finite number of seconds ≥ 0",
            request.arrival
        ));
    }
    if request.arrival > LONGEST_TRACE {
        return Err(format!(
            "arrival {} s is more than 31 days into the trace: split it",
            request.arrival
        ));
    }
    if !(request.service.is_finite() && request.service >= 0.0) {
        return Err(format!(
            "service time {} is not a finite number of seconds ≥ 0",
            request.service
        ));
    }
    if request.service > LONGEST_SERVICE {
        return Err(format!(
            "service time {} s is longer than a day",
            request.service
        ));
    }
    if let Some(previous) = previous_arrival
        && request.arrival < previous
    {
        return Err(format!(
            "arrival {} s is earlier than the previous request's {previous} s: sort the trace \
             by arrival",
            request.arrival
        ));
    }
    Ok(())
}

fn number(field: &str, name: &str) -> Result<f64, String> {
    field
        .parse::<f64>()
        .map_err(|_| format!("{name} {field:?} is not a number"))
}

fn seconds_row(fields: &[&str]) -> Result<Request, String> {
    let [arrival, service] = fields else {
        return Err(format!(
            "expected 2 fields (arrival_s,service_s), found {}",
            fields.len()
        ));
    };
    Ok(Request {
        arrival: number(arrival, "arrival_s")?,
        service: number(service, "service_s")?,
    })
}

fn token_row(fields: &[&str]) -> Result<(f64, u64, u64), String> {
    let [timestamp, context, generated] = fields else {
        return Err(format!(
            "expected 3 fields (TIMESTAMP,ContextTokens,GeneratedTokens), found {}",
            fields.len()
        ));
    };
    let count = |field: &str, name: &str| {
        field
            .parse::<u64>()
            .map_err(|_| format!("{name} {field:?} is not a whole number ≥ 0"))
    };
    Ok((
        timestamp_seconds(timestamp)?,
        count(context, "ContextTokens")?,
        count(generated, "GeneratedTokens")?,
    ))
}

/// Seconds since 1970 of `YYYY-MM-DD HH:MM:SS[.fraction]` (a `T` may replace the space), read
/// as UTC: only differences matter.
fn timestamp_seconds(text: &str) -> Result<f64, String> {
    let invalid = || format!("TIMESTAMP {text:?} is not `YYYY-MM-DD HH:MM:SS[.fraction]`");
    let (date, time) = text.split_once([' ', 'T']).ok_or_else(invalid)?;
    let parts = |s: &str, sep: char| -> Option<Vec<String>> {
        Some(s.split(sep).map(str::to_owned).collect())
    };
    let date = parts(date, '-').ok_or_else(invalid)?;
    let time = parts(time, ':').ok_or_else(invalid)?;
    let ([year, month, day], [hour, minute, second]) = (&date[..], &time[..]) else {
        return Err(invalid());
    };
    let whole = |s: &str, max: i64| -> Result<i64, String> {
        let value = s.parse::<i64>().map_err(|_| invalid())?;
        if s.starts_with(['+', '-']) || !(0..=max).contains(&value) {
            return Err(invalid());
        }
        Ok(value)
    };
    let (year, month, day) = (whole(year, 9999)?, whole(month, 12)?, whole(day, 31)?);
    if month == 0 || day == 0 {
        return Err(invalid());
    }
    let (hour, minute) = (whole(hour, 23)?, whole(minute, 59)?);
    let second_value = second.parse::<f64>().map_err(|_| invalid())?;
    if !(0.0..61.0).contains(&second_value) || second.starts_with(['+', '-']) {
        return Err(invalid());
    }
    let days = days_from_civil(year, month, day);
    Ok((days * 86_400 + hour * 3_600 + minute * 60) as f64 + second_value)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Trace, TraceError> {
        Trace::read(text.as_bytes(), &TokenModel::default())
    }

    fn line_of(error: TraceError) -> usize {
        match error {
            TraceError::Line { line, .. } | TraceError::Header { line, .. } => line,
            other => panic!("no line in {other:?}"),
        }
    }

    #[test]
    fn reads_seconds_with_or_without_header() {
        let trace = read("arrival_s,service_s\n0,1.5\n# a comment\n\n2.25, 0.5\n").unwrap();
        assert_eq!(
            trace.requests(),
            [
                Request {
                    arrival: 0.0,
                    service: 1.5
                },
                Request {
                    arrival: 2.25,
                    service: 0.5
                }
            ]
        );
        assert_eq!(trace.end(), 2.75);
        assert_eq!(read("0,1\n1,1\n").unwrap().requests().len(), 2);
    }

    #[test]
    fn refuses_clock_times_in_the_seconds_form() {
        let error = read("arrival_s,service_s\n1764700000.5,1\n").unwrap_err();
        assert_eq!(line_of(error), 2);
        // A quiet first hour is a start, not a clock.
        assert!(read("3600,1\n").is_ok());
    }

    #[test]
    fn reads_the_token_form_with_a_service_model() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:17:03.9799600,4808,10\n\
                    2023-11-16 18:17:04.0319600,3180,8\n\
                    2023-11-17 00:00:00,0,0\n";
        let model = TokenModel {
            overhead: 0.5,
            per_context_token: 0.001,
            per_generated_token: 0.1,
        };
        let trace = Trace::read(text.as_bytes(), &model).unwrap();
        let r = trace.requests();
        assert!((r[0].arrival - 0.0).abs() < 1e-9);
        assert!((r[1].arrival - 0.052).abs() < 1e-6, "{}", r[1].arrival);
        // Midnight is 5 h 42 min 56.02004 s after the first request.
        assert!(
            (r[2].arrival - 20_576.020_04).abs() < 1e-4,
            "{}",
            r[2].arrival
        );
        assert!((r[0].service - (0.5 + 4.808 + 1.0)).abs() < 1e-9);
        assert!((r[2].service - 0.5).abs() < 1e-9);
    }

    #[test]
    fn every_bad_row_names_its_line() {
        let cases = [
            ("arrival_s,service_s\n0,1\n1\n", 3),
            ("arrival_s,service_s\n0,1\nx,1\n", 3),
            ("arrival_s,service_s\n0,1\n1,NaN\n", 3),
            ("arrival_s,service_s\n0,1\n1,-2\n", 3),
            ("arrival_s,service_s\n0,1\n-1,1\n", 3),
            ("arrival_s,service_s\n0,1\n5,1\n\n4,1\n", 5),
            ("arrival_s,service_s\n0,1\n1,inf\n", 3),
            ("when,how_long\n0,1\n", 1),
            (
                "# header next\nTIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,1,-1\n",
                3,
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-13-16 18:17:03,1,1\n",
                2,
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16,1,1\n",
                2,
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04,1,1\n2023-11-16 18:17:03,1,1\n",
                3,
            ),
        ];
        for (text, line) in cases {
            let error = read(text).expect_err(text);
            let message = error.to_string();
            assert_eq!(line_of(error), line, "{text:?}: {message}");
            assert!(message.starts_with(&format!("line {line}:")), "{message}");
        }
    }

    #[test]
    fn an_empty_trace_is_refused() {
        for text in ["", "arrival_s,service_s\n", "# nothing\n\n"] {
            assert!(matches!(read(text), Err(TraceError::Empty)), "{text:?}");
        }
        assert!(matches!(Trace::new(vec![]), Err(TraceError::Empty)));
    }

    #[test]
    fn new_applies_the_file_rules() {
        let request = |arrival, service| Request { arrival, service };
        assert!(Trace::new(vec![request(0.0, 1.0), request(0.0, 0.0)]).is_ok());
        let error = Trace::new(vec![request(1.0, 1.0), request(0.5, 1.0)]).unwrap_err();
        assert_eq!(line_of(error), 2);
        let error = Trace::new(vec![request(f64::NAN, 1.0)]).unwrap_err();
        assert_eq!(line_of(error), 1);
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2023, 11, 16), 19_677);
    }
}
