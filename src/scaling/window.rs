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
}

impl LoadWindow {
    /// Adds one sample taken at `now`. Time never runs backwards here (the scaler makes sure),
    /// but a late sample would land in the newest bucket rather than reorder the history.
    pub(super) fn record(&mut self, now: Duration, load: f64) {
        let second = now.as_secs();
        match self.buckets.back_mut() {
            Some(last) if last.second >= second => {
                last.sum += load;
                last.samples = last.samples.saturating_add(1);
            }
            _ => self.buckets.push_back(Bucket {
                second,
                sum: load,
                samples: 1,
            }),
        }
    }

    /// Drops the buckets that no window of length `keep` ending at `now` can see.
    pub(super) fn forget_older_than(&mut self, now: Duration, keep: Duration) {
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

/// A window of `window` ending at `now` covers the buckets that start after `now - window`:
/// exactly ceil(window) one-second buckets, the current one included.
fn in_window(second: u64, now: Duration, window: Duration) -> bool {
    now.checked_sub(window)
        .is_none_or(|start| Duration::from_secs(second) > start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: f64) -> Duration {
        Duration::from_secs_f64(seconds)
    }

    #[test]
    fn mean_weighs_each_second_equally() {
        let mut window = LoadWindow::default();
        // Ten samples in one second and one in the next: the busy second counts once.
        for _ in 0..10 {
            window.record(at(1.5), 10.0);
        }
        window.record(at(2.5), 30.0);
        assert_eq!(window.mean(at(2.5), Duration::from_secs(60)), Some(20.0));
    }

    #[test]
    fn window_covers_exactly_its_length_in_seconds() {
        let mut window = LoadWindow::default();
        for second in 0..20 {
            window.record(Duration::from_secs(second), second as f64);
        }
        // Six buckets: 14..=19.
        assert_eq!(window.mean(at(19.5), Duration::from_secs(6)), Some(16.5));
        assert_eq!(window.mean(at(19.0), Duration::from_secs(6)), Some(16.5));
    }

    #[test]
    fn an_empty_window_has_no_mean_rather_than_zero() {
        let mut window = LoadWindow::default();
        assert_eq!(window.mean(at(5.0), Duration::from_secs(6)), None);
        window.record(at(1.0), 4.0);
        assert_eq!(window.mean(at(100.0), Duration::from_secs(6)), None);
        assert_eq!(window.mean(at(100.0), Duration::from_secs(600)), Some(4.0));
    }

    #[test]
    fn forgetting_keeps_what_the_window_still_sees() {
        let mut window = LoadWindow::default();
        for second in 0..100 {
            window.record(Duration::from_secs(second), 1.0);
        }
        window.forget_older_than(at(99.5), Duration::from_secs(60));
        assert_eq!(window.buckets.len(), 60);
        assert_eq!(window.mean(at(99.5), Duration::from_secs(60)), Some(1.0));
    }

    #[test]
    fn a_late_sample_joins_the_newest_second() {
        let mut window = LoadWindow::default();
        window.record(at(5.0), 2.0);
        window.record(at(3.0), 4.0);
        assert_eq!(window.buckets.len(), 1);
        assert_eq!(window.mean(at(5.0), Duration::from_secs(1)), Some(3.0));
    }
}
