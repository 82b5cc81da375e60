//! Load history in one-second buckets, so memory follows the window length and not how often
//! the operator decides (decisions may come on every sidecar change).

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    second: u64,
    sum: f64,
    samples: u32,
}

impl Bucket {
    fn mean(&self) -> f64 {
        self.sum / f64::from(self.samples.max(1))
    }
}

/// Pool load samples, newest last.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct LoadWindow {
    buckets: VecDeque<Bucket>,
    /// The newest bucket's level still stands: no decision has gone without a reading since.
    holding: bool,
}

impl LoadWindow {
    /// Adds one sample taken at `now` and forgets what no window of length `keep` can see.
    /// Seconds since the newest bucket in which no decision came (the operator was busy, or had
    /// no reason to look) hold that bucket's level, so a gap in decisions neither drops a
    /// window's peak nor lets a window end early; seconds whose decisions had no reading stay
    /// out (see [`LoadWindow::interrupt`]). Time never runs backwards here (the scaler makes
    /// sure), but a late sample would land in the newest bucket rather than reorder the history.
    pub(super) fn record(&mut self, now: Duration, load: f64, keep: Duration) {
        let second = now.as_secs();
        match self.buckets.back_mut() {
            Some(last) if last.second >= second => {
                last.sum += load;
                last.samples = last.samples.saturating_add(1);
            }
            _ => {
                if let Some(held) = self.buckets.back().copied().filter(|_| self.holding) {
                    // Only the seconds the window can still see: the gap may be hours.
                    let first = (held.second + 1).max(now.saturating_sub(keep).as_secs());
                    for skipped in (first..second).filter(|s| in_window(*s, now, keep)) {
                        self.buckets.push_back(Bucket {
                            second: skipped,
                            sum: held.mean(),
                            samples: 1,
                        });
                    }
                }
                self.buckets.push_back(Bucket {
                    second,
                    sum: load,
                    samples: 1,
                });
            }
        }
        self.holding = true;
        self.forget_older_than(now, keep);
    }

    /// A decision without a reading: the seconds until the next sample are missing data, left
    /// out of every mean rather than filled with a level nobody saw.
    pub(super) fn interrupt(&mut self) {
        self.holding = false;
    }

    /// Every second kept has the newest second's level: whatever the window, its mean (and
    /// trend) stays that level for as long as the samples do.
    pub(super) fn is_flat(&self) -> bool {
        let Some(newest) = self.buckets.back().map(Bucket::mean) else {
            return true;
        };
        self.buckets
            .iter()
            .all(|bucket| (bucket.mean() - newest).abs() <= FLAT_TOLERANCE * newest.abs().max(1.0))
    }

    /// Drops the buckets that no window of length `keep` ending at `now` can see.
    fn forget_older_than(&mut self, now: Duration, keep: Duration) {
        while self
            .buckets
            .front()
            .is_some_and(|bucket| !in_window(bucket.second, now, keep))
        {
            self.buckets.pop_front();
        }
    }

    /// Mean load over the window of length `window` ending at `now`: the mean of each second's
    /// mean, so a second with many samples weighs no more than a quiet one. Seconds without
    /// samples (data missing, or before the scaler started) are left out, not read as zero.
    pub(super) fn mean(&self, now: Duration, window: Duration) -> Option<f64> {
        let (sum, seconds) = self
            .buckets
            .iter()
            .rev()
            .take_while(|bucket| in_window(bucket.second, now, window))
            .fold((0.0, 0u32), |(sum, seconds), bucket| {
                (sum + bucket.mean(), seconds.saturating_add(1))
            });
        (seconds > 0).then(|| sum / f64::from(seconds))
    }
}

impl LoadWindow {
    /// The level at `now` of a straight line fitted (least squares) to the per-second means of
    /// the window: the mean without its lag on a ramp (a window mean trails a ramp by half the
    /// window), kept within the lowest and highest second of the window. The mean when the
    /// window holds under [`MIN_TREND_SECONDS`] seconds.
    pub(super) fn trend(&self, now: Duration, window: Duration) -> Option<f64> {
        let points: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .rev()
            .take_while(|bucket| in_window(bucket.second, now, window))
            .map(|bucket| (bucket.second as f64 + 0.5, bucket.mean()))
            .filter(|(_, y)| y.is_finite())
            .collect();
        let count = points.len() as f64;
        if points.is_empty() {
            return None;
        }
        let mean_x = points.iter().map(|p| p.0).sum::<f64>() / count;
        let mean_y = points.iter().map(|p| p.1).sum::<f64>() / count;
        if points.len() < MIN_TREND_SECONDS {
            return Some(mean_y);
        }
        let spread: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
        let slope = points
            .iter()
            .map(|p| (p.0 - mean_x) * (p.1 - mean_y))
            .sum::<f64>()
            / spread;
        // A line through a step overshoots the new level; never beyond what the window saw.
        let (low, high) = points
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(low, high), p| {
                (low.min(p.1), high.max(p.1))
            });
        // max then min rather than clamp: no panic whatever the points.
        Some(
            (mean_y + slope * (now.as_secs_f64() - mean_x))
                .max(low.max(0.0))
                .min(high),
        )
    }
}

/// Seconds whose levels differ by float rounding alone are level.
const FLAT_TOLERANCE: f64 = 1e-9;

/// Fewer seconds than this give no slope worth following.
const MIN_TREND_SECONDS: usize = 10;

/// A window of `window` ending at `now` covers the buckets that start after `now - window`:
/// exactly ceil(window) one-second buckets, the current one included.
fn in_window(second: u64, now: Duration, window: Duration) -> bool {
    now.checked_sub(window)
        .is_none_or(|start| Duration::from_secs(second) > start)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    #[test]
    fn mean_weighs_each_second_equally() {
        let mut window = LoadWindow::default();
        // Ten samples in one second and one in the next: the busy second counts once.
        for _ in 0..10 {
            window.record(at(1.5), 10.0, HOUR);
        }
        window.record(at(2.5), 30.0, HOUR);
        assert_eq!(window.mean(at(2.5), Duration::from_secs(60)), Some(20.0));
    }

    #[test]
    fn window_covers_exactly_its_length_in_seconds() {
        let mut window = LoadWindow::default();
        for second in 0..20 {
            window.record(Duration::from_secs(second), second as f64, HOUR);
        }
        // Six buckets: 14..=19.
        assert_eq!(window.mean(at(19.5), Duration::from_secs(6)), Some(16.5));
        assert_eq!(window.mean(at(19.0), Duration::from_secs(6)), Some(16.5));
    }

    #[test]
    fn an_empty_window_has_no_mean_rather_than_zero() {
        let mut window = LoadWindow::default();
        assert_eq!(window.mean(at(5.0), Duration::from_secs(6)), None);
        window.record(at(1.0), 4.0, HOUR);
        assert_eq!(window.mean(at(100.0), Duration::from_secs(6)), None);
        assert_eq!(window.mean(at(100.0), Duration::from_secs(600)), Some(4.0));
    }

    #[test]
    fn forgetting_keeps_what_the_window_still_sees() {
        let mut window = LoadWindow::default();
        let minute = Duration::from_secs(60);
        for second in 0..100 {
            window.record(Duration::from_secs(second), 1.0, minute);
        }
        assert_eq!(window.buckets.len(), 60);
        assert_eq!(window.mean(at(99.5), minute), Some(1.0));
    }

    #[test]
    fn seconds_without_a_decision_hold_the_level_before_them() {
        let mut window = LoadWindow::default();
        let keep = Duration::from_secs(4);
        window.record(at(10.2), 500.0, keep);
        window.record(at(11.2), 500.0, keep);
        // Nothing decided in seconds 12–14 (the operator was busy); the load has fallen by 15.
        window.record(at(15.9), 0.0, keep);
        // Seconds 12, 13 and 14 held 500: the peak is not lost to the gap.
        assert_eq!(window.mean(at(15.9), keep), Some(375.0));
        assert_eq!(window.buckets.len(), 4);
        // A gap of an hour fills only what the window can see.
        window.record(at(3615.5), 0.0, keep);
        assert_eq!(window.buckets.len(), 4);
        assert_eq!(window.mean(at(3615.5), keep), Some(0.0));
    }

    #[test]
    fn seconds_whose_decisions_had_no_reading_stay_out() {
        let mut window = LoadWindow::default();
        let keep = Duration::from_secs(4);
        window.record(at(11.2), 500.0, keep);
        window.interrupt();
        window.record(at(15.9), 0.0, keep);
        assert_eq!(window.mean(at(15.9), keep), Some(0.0));
        // Holding resumes after the next sample: second 16 holds 0.
        window.record(at(17.5), 20.0, keep);
        assert_eq!(window.mean(at(17.5), keep), Some(20.0 / 3.0));
    }

    #[test]
    fn the_trend_follows_a_ramp_without_the_lag_of_the_mean() {
        let mut window = LoadWindow::default();
        for second in 0..60 {
            window.record(Duration::from_secs(second), second as f64, HOUR);
        }
        let now = at(59.5);
        let minute = Duration::from_secs(60);
        // The mean trails by half the window; the line's level now is the ramp's.
        assert_eq!(window.mean(now, minute), Some(29.5));
        let trend = window.trend(now, minute).unwrap();
        assert!((trend - 59.0).abs() < 1e-9, "{trend}");
        // Flat load: the trend is the mean. Few points: the mean.
        let mut flat = LoadWindow::default();
        for second in 0..60 {
            flat.record(Duration::from_secs(second), 7.0, HOUR);
        }
        assert!((flat.trend(now, minute).unwrap() - 7.0).abs() < 1e-9);
        let mut few = LoadWindow::default();
        few.record(at(1.0), 2.0, HOUR);
        few.record(at(2.0), 4.0, HOUR);
        assert_eq!(few.trend(at(2.0), minute), Some(3.0));
        assert_eq!(LoadWindow::default().trend(now, minute), None);
    }

    #[test]
    fn the_trend_of_a_step_stays_within_what_the_window_saw() {
        let mut window = LoadWindow::default();
        for second in 0..60 {
            window.record(
                Duration::from_secs(second),
                if second < 30 { 30.0 } else { 90.0 },
                HOUR,
            );
        }
        let trend = window.trend(at(59.5), Duration::from_secs(60)).unwrap();
        assert_eq!(trend, 90.0);
    }

    #[test]
    fn the_trend_leaves_out_what_is_not_a_number() {
        let mut window = LoadWindow::default();
        for second in 0..30 {
            window.record(Duration::from_secs(second), f64::NAN, HOUR);
        }
        let minute = Duration::from_secs(60);
        assert_eq!(window.trend(at(29.5), minute), None);
        for second in 30..60 {
            window.record(Duration::from_secs(second), 5.0, HOUR);
        }
        window.record(Duration::from_secs(60), f64::INFINITY, HOUR);
        assert_eq!(window.trend(at(60.5), minute), Some(5.0));
    }

    #[test]
    fn a_late_sample_joins_the_newest_second() {
        let mut window = LoadWindow::default();
        window.record(at(5.0), 2.0, HOUR);
        window.record(at(3.0), 4.0, HOUR);
        assert_eq!(window.buckets.len(), 1);
        assert_eq!(window.mean(at(5.0), Duration::from_secs(1)), Some(3.0));
    }
}
