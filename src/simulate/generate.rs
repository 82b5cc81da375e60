//! Seeded generators for the usual load shapes, so a what-if needs no recorded trace.
//!
//! A shape is written `NAME:key=value,...` (`step:base=5,peak=60,at=2m,for=2m,duration=10m`),
//! a service-time distribution `KIND:params` (`lognormal:1s,0.5`). Rates are requests per
//! second, times are durations (`90s`, `2m`). Arrivals follow a Poisson process whose rate
//! follows the shape, except `waves`, where groups of users arrive together. The same seed
//! gives the same trace.

use std::f64::consts::PI;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::trace::{LONGEST_SERVICE, LONGEST_TRACE, Request, Trace, TraceError};
use asyncpool_contract::duration::parse_duration;

/// A bad generator or service-time spec; the message says what is expected.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct SpecError(String);

/// How the arrival rate moves over time.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A constant rate.
    Steady { rate: f64 },
    /// `base`, then `peak` from `at` for `hold`, then `base` again: a flash crowd.
    Step {
        base: f64,
        peak: f64,
        at: f64,
        hold: f64,
    },
    /// `from` until `start`, then a straight line to `to` over `over`, then `to`.
    Ramp {
        from: f64,
        to: f64,
        start: f64,
        over: f64,
    },
    /// A day compressed into `period`: from `low` up to `high` and back, starting low.
    Diurnal { low: f64, high: f64, period: f64 },
    /// `rate` for `on`, nothing for `off`, repeated, starting on.
    OnOff { rate: f64, on: f64, off: f64 },
    /// Every `every`, `users` requests arrive spread evenly at random over `spread`.
    Waves { users: u32, every: f64, spread: f64 },
}

/// How long each request holds a worker slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceTime {
    Fixed(f64),
    Exponential {
        mean: f64,
    },
    /// Median and the standard deviation of the logarithm.
    LogNormal {
        median: f64,
        sigma: f64,
    },
    /// Heavy tailed: at least `scale`, tail exponent `alpha` (mean finite above 1).
    Pareto {
        scale: f64,
        alpha: f64,
    },
    Uniform {
        min: f64,
        max: f64,
    },
}

/// A shape, a service-time distribution and a length.
#[derive(Debug, Clone, PartialEq)]
pub struct Generator {
    pub shape: Shape,
    pub service: ServiceTime,
    pub duration: f64,
}

/// The most requests a generator may make (by its peak rate over its duration): enough for a
/// month at a few per second, and bounded in memory.
const MOST_REQUESTS: f64 = 2e7;

/// The named traces of the scaling-quality benchmark (`docs/benchmarks.md`), so that a user
/// can run the same ones: name, shape, service time.
pub const PRESETS: [(&str, &str, &str); 6] = [
    (
        "uvicorn-notes",
        "waves:users=100,every=20s,spread=1s,duration=40m",
        "3.15s",
    ),
    (
        "flash-crowd",
        "step:base=4,peak=60,at=2m,for=2m,duration=10m",
        "lognormal:1s,0.3",
    ),
    (
        "diurnal",
        "diurnal:low=2,high=50,period=20m,duration=40m",
        "lognormal:1s,0.5",
    ),
    (
        "on-off",
        "onoff:rate=40,on=1m,off=2m,duration=15m",
        "lognormal:1s,0.3",
    ),
    (
        "heavy-tail",
        "steady:rate=20,duration=15m",
        "pareto:0.3s,1.5",
    ),
    (
        "ramp",
        "ramp:from=2,to=60,start=1m,over=10m,duration=15m",
        "lognormal:1s,0.3",
    ),
];

impl Generator {
    /// A generator from a preset name or a shape spec, with the service time given (or the
    /// preset's, or 1 s).
    pub fn parse(shape: &str, service: Option<&str>) -> Result<Self, SpecError> {
        let (shape, preset_service) = match PRESETS.iter().find(|(name, ..)| *name == shape) {
            Some((_, spec, service)) => (*spec, Some(*service)),
            None => (shape, None),
        };
        let service = ServiceTime::parse(service.or(preset_service).unwrap_or("1s"))?;
        let (name, params) = shape.split_once(':').unwrap_or((shape, ""));
        let mut params = Params::parse(name, params)?;
        let duration = params.duration("duration", Some(600.0))?;
        if duration <= 0.0 || duration > LONGEST_TRACE {
            return Err(SpecError(format!(
                "{name}: duration must be above 0 and at most 31 days"
            )));
        }
        let shape = match name {
            "steady" => Shape::Steady {
                rate: params.rate("rate", None)?,
            },
            "step" => Shape::Step {
                base: params.rate("base", Some(0.0))?,
                peak: params.rate("peak", None)?,
                at: params.duration("at", None)?,
                hold: params.duration("for", None)?,
            },
            "ramp" => Shape::Ramp {
                from: params.rate("from", Some(0.0))?,
                to: params.rate("to", None)?,
                start: params.duration("start", Some(0.0))?,
                over: params.duration("over", None)?,
            },
            "diurnal" => Shape::Diurnal {
                low: params.rate("low", Some(0.0))?,
                high: params.rate("high", None)?,
                period: params.positive_duration("period")?,
            },
            "onoff" => Shape::OnOff {
                rate: params.rate("rate", None)?,
                on: params.positive_duration("on")?,
                off: params.duration("off", None)?,
            },
            "waves" => Shape::Waves {
                users: params.count("users")?,
                every: params.positive_duration("every")?,
                spread: params.duration("spread", Some(0.0))?,
            },
            other => {
                let presets: Vec<&str> = PRESETS.iter().map(|(name, ..)| *name).collect();
                return Err(SpecError(format!(
                    "unknown load shape {other:?}: expected steady, step, ramp, diurnal, onoff, \
                     waves, or a preset: {}",
                    presets.join(", ")
                )));
            }
        };
        params.finish()?;
        let generator = Self {
            shape,
            service,
            duration,
        };
        let expected = generator.peak_rate() * duration;
        if expected.is_nan() || expected > MOST_REQUESTS {
            return Err(SpecError(format!(
                "{name}: up to {expected:.3e} requests; at most {MOST_REQUESTS:.0e} are generated \
                 (lower the rate or the duration)"
            )));
        }
        Ok(generator)
    }

    /// The trace this generator makes with `seed`.
    pub fn generate(&self, seed: u64) -> Result<Trace, TraceError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut arrivals = Vec::new();
        match self.shape {
            Shape::Waves {
                users,
                every,
                spread,
            } => {
                let mut start = 0.0;
                while start < self.duration {
                    let mut wave: Vec<f64> = (0..users)
                        .map(|_| start + spread * rng.random::<f64>())
                        .filter(|t| *t < self.duration)
                        .collect();
                    wave.sort_by(f64::total_cmp);
                    arrivals.extend(wave);
                    start += every;
                }
            }
            _ => {
                // Thinning (Lewis and Shedler): candidates at the peak rate, each kept with
                // probability rate(t) / peak.
                let peak = self.peak_rate();
                if peak > 0.0 {
                    let mut t = 0.0;
                    loop {
                        t += exponential(&mut rng, 1.0 / peak);
                        if t >= self.duration {
                            break;
                        }
                        if rng.random::<f64>() * peak < self.rate_at(t) {
                            arrivals.push(t);
                        }
                    }
                }
            }
        }
        let requests = arrivals
            .into_iter()
            .map(|arrival| Request {
                arrival,
                service: self.service.sample(&mut rng),
            })
            .collect();
        Trace::new(requests)
    }

    /// Arrivals per second at `t` (for `waves`, the mean rate).
    pub fn rate_at(&self, t: f64) -> f64 {
        match self.shape {
            Shape::Steady { rate } => rate,
            Shape::Step {
                base,
                peak,
                at,
                hold,
            } => {
                if (at..at + hold).contains(&t) {
                    peak
                } else {
                    base
                }
            }
            Shape::Ramp {
                from,
                to,
                start,
                over,
            } => {
                if t < start {
                    from
                } else if over <= 0.0 || t >= start + over {
                    to
                } else {
                    from + (to - from) * (t - start) / over
                }
            }
            Shape::Diurnal { low, high, period } => {
                low + (high - low) * (1.0 - (2.0 * PI * t / period).cos()) / 2.0
            }
            Shape::OnOff { rate, on, off } => {
                if t.rem_euclid(on + off) < on {
                    rate
                } else {
                    0.0
                }
            }
            Shape::Waves { users, every, .. } => f64::from(users) / every,
        }
    }

    fn peak_rate(&self) -> f64 {
        match self.shape {
            Shape::Steady { rate } | Shape::OnOff { rate, .. } => rate,
            Shape::Step { base, peak, .. } => base.max(peak),
            Shape::Ramp { from, to, .. } => from.max(to),
            Shape::Diurnal { low, high, .. } => low.max(high),
            Shape::Waves { .. } => self.rate_at(0.0),
        }
    }
}

impl ServiceTime {
    /// `1s` (fixed), `exp:MEAN`, `lognormal:MEDIAN,SIGMA`, `pareto:SCALE,ALPHA`,
    /// `uniform:MIN,MAX`.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        let bad = |why: &str| {
            SpecError(format!(
                "service time {spec:?}: {why}; expected a duration (1s) or exp:MEAN, \
                 lognormal:MEDIAN,SIGMA, pareto:SCALE,ALPHA, uniform:MIN,MAX"
            ))
        };
        let time = |text: &str| {
            parse_duration(text.trim())
                .map(|d| d.as_secs_f64())
                .map_err(|e| bad(&e))
        };
        let positive = |text: &str, name: &str| {
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| bad(&format!("{name} must be a number above 0")))
        };
        let Some((kind, params)) = spec.split_once(':') else {
            return Ok(ServiceTime::Fixed(time(spec)?));
        };
        let params: Vec<&str> = params.split(',').collect();
        let service = match (kind, &params[..]) {
            ("exp", [mean]) => ServiceTime::Exponential { mean: time(mean)? },
            ("lognormal", [median, sigma]) => ServiceTime::LogNormal {
                median: time(median)?,
                sigma: positive(sigma, "SIGMA")?,
            },
            ("pareto", [scale, alpha]) => ServiceTime::Pareto {
                scale: time(scale)?,
                alpha: positive(alpha, "ALPHA")?,
            },
            ("uniform", [min, max]) => {
                let (min, max) = (time(min)?, time(max)?);
                if min > max {
                    return Err(bad("MIN is above MAX"));
                }
                ServiceTime::Uniform { min, max }
            }
            _ => return Err(bad("unknown form")),
        };
        Ok(service)
    }

    /// A draw, capped at a day (what a trace may hold).
    pub fn sample(&self, rng: &mut impl Rng) -> f64 {
        let seconds = match *self {
            ServiceTime::Fixed(seconds) => seconds,
            ServiceTime::Exponential { mean } => exponential(rng, mean),
            ServiceTime::LogNormal { median, sigma } => median * (sigma * normal(rng)).exp(),
            // 1 - u lies in (0, 1], so the power is finite.
            ServiceTime::Pareto { scale, alpha } => {
                scale / (1.0 - rng.random::<f64>()).powf(1.0 / alpha)
            }
            ServiceTime::Uniform { min, max } => min + (max - min) * rng.random::<f64>(),
        };
        seconds.min(LONGEST_SERVICE)
    }
}

fn exponential(rng: &mut impl Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// `key=value` parameters of one shape; each is taken once, and leftovers are refused.
struct Params<'a> {
    shape: &'a str,
    values: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    fn parse(shape: &'a str, text: &'a str) -> Result<Self, SpecError> {
        let mut values = Vec::new();
        for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| SpecError(format!("{shape}: {pair:?} is not key=value")))?;
            values.push((key.trim(), value.trim()));
        }
        Ok(Self { shape, values })
    }

    fn take(&mut self, key: &str) -> Option<&'a str> {
        let index = self.values.iter().position(|(k, _)| *k == key)?;
        Some(self.values.remove(index).1)
    }

    fn missing(&self, key: &str) -> SpecError {
        SpecError(format!("{}: {key}= is required", self.shape))
    }

    fn rate(&mut self, key: &str, default: Option<f64>) -> Result<f64, SpecError> {
        let Some(text) = self.take(key) else {
            return default.ok_or_else(|| self.missing(key));
        };
        text.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| {
                SpecError(format!(
                    "{}: {key}={text} must be requests per second, a number ≥ 0",
                    self.shape
                ))
            })
    }

    fn duration(&mut self, key: &str, default: Option<f64>) -> Result<f64, SpecError> {
        let Some(text) = self.take(key) else {
            return default.ok_or_else(|| self.missing(key));
        };
        parse_duration(text)
            .map(|d| d.as_secs_f64())
            .map_err(|e| SpecError(format!("{}: {key}: {e}", self.shape)))
    }

    fn positive_duration(&mut self, key: &str) -> Result<f64, SpecError> {
        let value = self.duration(key, None)?;
        if value <= 0.0 {
            return Err(SpecError(format!("{}: {key} must be above 0", self.shape)));
        }
        Ok(value)
    }

    fn count(&mut self, key: &str) -> Result<u32, SpecError> {
        let text = self.take(key).ok_or_else(|| self.missing(key))?;
        text.parse::<u32>().map_err(|_| {
            SpecError(format!(
                "{}: {key}={text} must be a whole number",
                self.shape
            ))
        })
    }

    fn finish(self) -> Result<(), SpecError> {
        match self.values.first() {
            Some((key, _)) => Err(SpecError(format!(
                "{}: unknown parameter {key:?}",
                self.shape
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let generator = Generator::parse("flash-crowd", None).unwrap();
        let a = generator.generate(7).unwrap();
        let b = generator.generate(7).unwrap();
        let c = generator.generate(8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_arrival_rate_follows_the_shape() {
        let generator =
            Generator::parse("step:base=5,peak=50,at=100s,for=100s,duration=300s", None).unwrap();
        let trace = generator.generate(1).unwrap();
        let count = |from: f64, to: f64| {
            trace
                .requests()
                .iter()
                .filter(|r| (from..to).contains(&r.arrival))
                .count() as f64
        };
        // Poisson counts: 500 ± 3 × √500 before, 5000 ± 3 × √5000 during.
        assert!((count(0.0, 100.0) - 500.0).abs() < 70.0);
        assert!((count(100.0, 200.0) - 5000.0).abs() < 220.0);
        assert!((count(200.0, 300.0) - 500.0).abs() < 70.0);
        assert!(trace.requests().iter().all(|r| r.service == 1.0));
    }

    #[test]
    fn waves_bring_their_users_together() {
        let generator = Generator::parse(
            "waves:users=100,every=20s,spread=1s,duration=60s",
            Some("3.15s"),
        )
        .unwrap();
        let trace = generator.generate(3).unwrap();
        assert_eq!(trace.requests().len(), 300);
        for wave in 0..3 {
            let start = f64::from(wave) * 20.0;
            let in_wave = trace
                .requests()
                .iter()
                .filter(|r| (start..start + 1.0).contains(&r.arrival))
                .count();
            assert_eq!(in_wave, 100);
        }
        assert_eq!(trace.requests()[0].service, 3.15);
    }

    #[test]
    fn service_distributions_have_their_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mean = |service: ServiceTime, rng: &mut ChaCha8Rng| {
            (0..200_000).map(|_| service.sample(rng)).sum::<f64>() / 200_000.0
        };
        let exp = ServiceTime::parse("exp:2s").unwrap();
        assert!((mean(exp, &mut rng) - 2.0).abs() < 0.05);
        // Log-normal mean = median × e^(σ²/2) = 1.1331.
        let lognormal = ServiceTime::parse("lognormal:1s,0.5").unwrap();
        assert!((mean(lognormal, &mut rng) - 1.1331).abs() < 0.02);
        let uniform = ServiceTime::parse("uniform:1s,3s").unwrap();
        assert!((mean(uniform, &mut rng) - 2.0).abs() < 0.02);
        // Pareto α = 3: mean = α x / (α − 1) = 1.5 (a finite variance keeps the test steady).
        let pareto = ServiceTime::parse("pareto:1s,3").unwrap();
        assert!((mean(pareto, &mut rng) - 1.5).abs() < 0.03);
        assert!((0..1000).all(|_| pareto.sample(&mut rng) >= 1.0));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases = [
            ("wobble:rate=1", None, "unknown load shape"),
            ("steady", None, "rate= is required"),
            ("steady:rate=-1", None, "number ≥ 0"),
            (
                "steady:rate=1,colour=red",
                None,
                "unknown parameter \"colour\"",
            ),
            ("steady:rate=1,duration=10", None, "missing unit"),
            (
                "steady:rate=1,duration=0s",
                None,
                "duration must be above 0",
            ),
            ("onoff:rate=1,on=0s,off=1s", None, "on must be above 0"),
            ("waves:users=ten,every=1s", None, "whole number"),
            ("steady:rate", None, "is not key=value"),
            ("steady:rate=1", Some("lognormal:1s"), "unknown form"),
            ("steady:rate=1", Some("pareto:1s,-2"), "ALPHA must be"),
            ("steady:rate=1", Some("uniform:3s,1s"), "MIN is above MAX"),
            ("steady:rate=1e308", None, "at most 2e7 are generated"),
            ("waves:users=10,every=1ns,duration=1h", None, "at most 2e7"),
            ("steady:rate=1,duration=800h", None, "at most 31 days"),
        ];
        for (shape, service, expected) in cases {
            let error = Generator::parse(shape, service).unwrap_err().to_string();
            assert!(error.contains(expected), "{shape} {service:?}: {error}");
        }
    }

    #[test]
    fn every_preset_parses_and_generates() {
        for (name, ..) in PRESETS {
            let generator = Generator::parse(name, None).unwrap();
            assert!(
                !generator.generate(1).unwrap().requests().is_empty(),
                "{name}"
            );
        }
    }

    #[test]
    fn a_shape_with_no_load_is_an_empty_trace() {
        let generator = Generator::parse("steady:rate=0,duration=10s", None).unwrap();
        assert!(matches!(generator.generate(1), Err(TraceError::Empty)));
    }
}
