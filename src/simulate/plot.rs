//! An SVG plot of a run, three panels over one time axis: arrivals per second, each policy's
//! replicas, and the highest queue wait of the requests arriving at each moment.

use std::fmt::Write as _;

use super::report::{Comparison, PLOT_BUCKETS, bucket_seconds};

/// One line on the replicas and wait panels.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// Replicas from each change on.
    pub replicas: Vec<(f64, u32)>,
    /// Highest wait per bucket (`PLOT_BUCKETS` over the horizon), `None` for none.
    pub max_wait: Vec<Option<f64>>,
}

/// What a plot shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    pub title: String,
    pub horizon: f64,
    /// Arrivals per bucket.
    pub arrivals: Vec<u64>,
    pub series: Vec<Series>,
}

impl Plot {
    pub fn of(comparison: &Comparison) -> Self {
        Self {
            title: format!(
                "pool {}: {} requests, start-up delay {}",
                comparison.pool, comparison.trace.requests, comparison.startup_delay
            ),
            horizon: comparison.plot_horizon,
            arrivals: comparison.trace.arrivals.clone(),
            series: comparison
                .policies
                .iter()
                .map(|p| Series {
                    name: p.policy.clone(),
                    replicas: p.timeline.replicas.clone(),
                    max_wait: p.timeline.max_wait.clone(),
                })
                .collect(),
        }
    }
}

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PANEL_GAP: f64 = 40.0;
const TOP: f64 = 60.0;
const PANELS: [(&str, f64); 3] = [
    ("arrivals per second", 120.0),
    ("replicas", 220.0),
    ("highest queue wait (s)", 160.0),
];

fn colour(name: &str, index: usize) -> &'static str {
    match name {
        "asyncpool" | "simulator" => "#1f77b4",
        "hpa-keda" => "#d62728",
        "knative" => "#2ca02c",
        "fixed" => "#7f7f7f",
        "clairvoyant" => "#000000",
        "real cluster" => "#ff7f0e",
        _ => ["#9467bd", "#8c564b", "#e377c2", "#17becf"][index % 4],
    }
}

/// A round step for about `ticks` ticks up to `max`.
fn step_for(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

struct Panel {
    top: f64,
    height: f64,
    y_max: f64,
    horizon: f64,
}

impl Panel {
    fn x(&self, t: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (t / self.horizon).clamp(0.0, 1.0)
    }

    fn y(&self, value: f64) -> f64 {
        self.top + self.height * (1.0 - (value / self.y_max).clamp(0.0, 1.0))
    }

    fn frame(&self, out: &mut String, label: &str) {
        let right = WIDTH - RIGHT;
        let bottom = self.top + self.height;
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            self.top,
            right - LEFT,
            self.height
        );
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-size="13">{label}</text>"#,
            self.top - 6.0
        );
        let step = step_for(self.y_max, 4.0);
        let mut value = 0.0;
        while value <= self.y_max + 1e-9 {
            let y = self.y(value);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                LEFT - 6.0,
                y + 4.0,
                trim(value)
            );
            value += step;
        }
        let minutes = self.horizon / 60.0;
        let t_step = step_for(minutes, 10.0) * 60.0;
        let mut t = 0.0;
        while t <= self.horizon + 1e-9 {
            let x = self.x(t);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{}" stroke="#999"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
                bottom + 4.0,
                bottom + 16.0,
                trim(t / 60.0)
            );
            t += t_step;
        }
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document.
pub fn svg(plot: &Plot) -> String {
    let horizon = plot.horizon.max(1.0);
    let bucket = bucket_seconds(horizon, PLOT_BUCKETS);
    let height = TOP + PANELS.iter().map(|(_, h)| h + PANEL_GAP).sum::<f64>() + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        escape(&plot.title)
    );
    let mut x = LEFT;
    for (index, series) in plot.series.iter().enumerate() {
        let dash = if series.name == "clairvoyant" {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="40" x2="{}" y2="40" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="44" font-size="12">{}</text>"#,
            x + 20.0,
            colour(&series.name, index),
            x + 25.0,
            escape(&series.name)
        );
        x += 35.0 + 7.5 * series.name.len() as f64;
    }

    let mut top = TOP + 10.0;
    let panel = |top: f64, height: f64, y_max: f64| Panel {
        top,
        height,
        y_max: if y_max > 0.0 { y_max * 1.05 } else { 1.0 },
        horizon,
    };

    // Arrivals.
    let rates: Vec<f64> = plot
        .arrivals
        .iter()
        .map(|count| *count as f64 / bucket)
        .collect();
    let p = panel(top, PANELS[0].1, rates.iter().copied().fold(0.0, f64::max));
    p.frame(&mut out, PANELS[0].0);
    let mut path = format!("M{:.1},{:.1}", p.x(0.0), p.y(0.0));
    for (i, rate) in rates.iter().enumerate() {
        let (from, to) = (i as f64 * bucket, (i + 1) as f64 * bucket);
        let _ = write!(
            path,
            " L{:.1},{:.1} L{:.1},{:.1}",
            p.x(from),
            p.y(*rate),
            p.x(to),
            p.y(*rate)
        );
    }
    let _ = writeln!(
        out,
        r##"<path d="{path} L{:.1},{:.1} Z" fill="#c6dbef" stroke="#6baed6"/>"##,
        p.x(horizon),
        p.y(0.0)
    );
    top += PANELS[0].1 + PANEL_GAP;

    // Replicas, as steps.
    let y_max = plot
        .series
        .iter()
        .flat_map(|s| s.replicas.iter().map(|(_, r)| f64::from(*r)))
        .fold(0.0, f64::max);
    let p = panel(top, PANELS[1].1, y_max);
    p.frame(&mut out, PANELS[1].0);
    for (index, series) in plot.series.iter().enumerate() {
        let mut path = String::new();
        let mut last: Option<u32> = None;
        for &(t, replicas) in &series.replicas {
            let y = p.y(f64::from(replicas));
            match last {
                None => {
                    let _ = write!(path, "M{:.1},{y:.1}", p.x(t));
                }
                Some(previous) => {
                    let _ = write!(
                        path,
                        " L{x:.1},{:.1} L{x:.1},{y:.1}",
                        p.y(f64::from(previous)),
                        x = p.x(t)
                    );
                }
            }
            last = Some(replicas);
        }
        if let Some(previous) = last {
            let _ = write!(
                path,
                " L{:.1},{:.1}",
                p.x(horizon),
                p.y(f64::from(previous))
            );
        }
        let dash = if series.name == "clairvoyant" {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<path d="{path}" fill="none" stroke="{}" stroke-width="1.6"{dash}/>"#,
            colour(&series.name, index)
        );
    }
    top += PANELS[1].1 + PANEL_GAP;

    // Highest wait per bucket.
    let y_max = plot
        .series
        .iter()
        .flat_map(|s| s.max_wait.iter().flatten().copied())
        .fold(0.0, f64::max);
    let p = panel(top, PANELS[2].1, y_max);
    p.frame(&mut out, PANELS[2].0);
    for (index, series) in plot.series.iter().enumerate() {
        if series.name == "clairvoyant" {
            continue;
        }
        let mut path = String::new();
        let mut pen_down = false;
        for (i, wait) in series.max_wait.iter().enumerate() {
            match wait {
                Some(wait) => {
                    let t = (i as f64 + 0.5) * bucket;
                    let verb = if pen_down { 'L' } else { 'M' };
                    let _ = write!(path, " {verb}{:.1},{:.1}", p.x(t), p.y(*wait));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = writeln!(
                out,
                r#"<path d="{}" fill="none" stroke="{}" stroke-width="1.3"/>"#,
                path.trim_start(),
                colour(&series.name, index)
            );
        }
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="end">minutes</text>"#,
        WIDTH - RIGHT,
        top + PANELS[2].1 + 30.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(step_for(10.0, 4.0), 5.0);
        assert_eq!(step_for(0.9, 4.0), 0.5);
        assert_eq!(step_for(170.0, 4.0), 50.0);
    }

    #[test]
    fn a_plot_has_every_series_and_is_well_formed() {
        let plot = Plot {
            title: "a <test>".into(),
            horizon: 120.0,
            arrivals: vec![3; PLOT_BUCKETS],
            series: vec![
                Series {
                    name: "asyncpool".into(),
                    replicas: vec![(0.0, 1), (30.0, 4), (90.0, 2)],
                    max_wait: vec![Some(0.5); PLOT_BUCKETS],
                },
                Series {
                    name: "clairvoyant".into(),
                    replicas: vec![(0.0, 1)],
                    max_wait: vec![None; PLOT_BUCKETS],
                },
            ],
        };
        let svg = svg(&plot);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;test&gt;"));
        assert!(svg.contains(">asyncpool<") && svg.contains(">clairvoyant<"));
        assert_eq!(svg.matches("<path").count(), 1 + 2 + 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
