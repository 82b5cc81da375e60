//! The clairvoyant bound: what a pool would pay if it knew the future. Every request is served
//! the moment it arrives, so at each instant the pool needs ceil(requests in service /
//! concurrency) workers (at least `min`, at most `max`). Each extra worker starts one start-up
//! delay before it is needed, and is kept through a gap shorter than that delay (stopping and
//! starting again would cost the delay). Worker k's cost is then the time the pool needs at
//! least k workers, plus one start-up per start, plus the short gaps it is kept through: no
//! policy pays fewer pod-seconds without making requests wait.

/// The bound's figures, and its replicas over time for the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    pub pod_seconds: f64,
    /// Most requests in service at once with no waiting.
    pub peak_demand: u64,
    pub peak_replicas: u32,
    /// When the first extra worker starts, if one does.
    pub first_start: Option<f64>,
    /// Running workers from each change on, starting at time 0.
    pub replicas: Vec<(f64, u32)>,
}

/// The bound for requests `(arrival, service)` on workers of `concurrency`, over `[0, horizon]`.
pub fn clairvoyant(
    requests: impl Iterator<Item = (f64, f64)>,
    concurrency: u32,
    min: u32,
    max: u32,
    startup: f64,
    horizon: f64,
) -> Bound {
    // Demand steps: +1 at each arrival, −1 at each departure; a departure at the same instant
    // as an arrival frees its slot first.
    let mut steps: Vec<(f64, i64)> = Vec::new();
    for (arrival, service) in requests {
        steps.push((arrival, 1));
        steps.push((arrival + service, -1));
    }
    steps.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));

    let concurrency = u64::from(concurrency.max(1));
    let needed = |demand: u64| -> u32 {
        let workers = u32::try_from(demand.div_ceil(concurrency)).unwrap_or(u32::MAX);
        workers.clamp(min, max.max(min))
    };
    // Per level above `min`: its intervals (start, end), the last one open while needed.
    let mut levels: Vec<Vec<(f64, Option<f64>)>> = Vec::new();
    let mut demand: u64 = 0;
    let mut peak_demand = 0;
    let mut level = min;
    let mut index = 0;
    while index < steps.len() {
        let at = steps[index].0;
        while index < steps.len() && steps[index].0 == at {
            demand = demand.saturating_add_signed(steps[index].1);
            index += 1;
        }
        peak_demand = peak_demand.max(demand);
        let wanted = needed(demand);
        for k in level..wanted {
            let k = (k - min) as usize;
            if levels.len() <= k {
                levels.push(Vec::new());
            }
            let intervals = &mut levels[k];
            match intervals.last_mut() {
                // A short gap: kept running through it.
                Some((_, end)) if end.is_some_and(|e| at - e < startup) => *end = None,
                _ => intervals.push(((at - startup).max(0.0), None)),
            }
        }
        for k in wanted..level {
            if let Some((_, end)) = levels[(k - min) as usize].last_mut() {
                *end = Some(at);
            }
        }
        level = wanted;
    }

    let mut changes: Vec<(f64, i64)> = Vec::new();
    let mut pod_seconds = f64::from(min) * horizon;
    let mut first_start: Option<f64> = None;
    for intervals in &levels {
        for &(start, end) in intervals {
            let end = end.unwrap_or(horizon).min(horizon);
            pod_seconds += (end - start).max(0.0);
            first_start = Some(first_start.map_or(start, |f: f64| f.min(start)));
            changes.push((start, 1));
            changes.push((end, -1));
        }
    }
    changes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut replicas = vec![(0.0, min)];
    let mut running = i64::from(min);
    let mut peak_replicas = min;
    for (at, change) in changes {
        running += change;
        let count = u32::try_from(running).unwrap_or(0);
        peak_replicas = peak_replicas.max(count);
        match replicas.last_mut() {
            Some((last, value)) if *last == at => *value = count,
            _ => replicas.push((at, count)),
        }
    }
    replicas.dedup_by(|later, earlier| later.1 == earlier.1);
    Bound {
        pod_seconds,
        peak_demand,
        peak_replicas,
        first_start,
        replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_bound() {
        // Concurrency 2, min 1, start-up 3 s, horizon 30 s.
        // Requests (arrival, service): (0, 10), (1, 4), (2, 2) → demand 1, 2, 3 at 0, 1, 2;
        // 2 at 4 (the third leaves), 1 at 5, 0 at 10. Workers needed: 1 until 2, 2 from 2 to
        // 4, 1 after. Then (20, 1), (20, 1), (20, 1): demand 3 from 20 to 21, 2 workers.
        // Level 2 runs [2 − 3, 4] clipped to [0, 4] and [17, 21] (the gap 4 → 20 is longer
        // than the start-up, so it stops and starts again): 4 + 4 = 8 s.
        // Total: 1 × 30 + 8 = 38 pod-seconds.
        let requests = [
            (0.0, 10.0),
            (1.0, 4.0),
            (2.0, 2.0),
            (20.0, 1.0),
            (20.0, 1.0),
            (20.0, 1.0),
        ];
        let bound = clairvoyant(requests.into_iter(), 2, 1, 10, 3.0, 30.0);
        assert!((bound.pod_seconds - 38.0).abs() < 1e-9, "{bound:?}");
        assert_eq!(bound.peak_demand, 3);
        assert_eq!(bound.peak_replicas, 2);
        assert_eq!(bound.first_start, Some(0.0));
        assert_eq!(bound.replicas, [(0.0, 2), (4.0, 1), (17.0, 2), (21.0, 1)]);
    }

    #[test]
    fn a_short_gap_is_bridged() {
        // Concurrency 1, min 0, start-up 5 s: needs at [10, 11] and [13, 14]; the 2 s gap is
        // shorter than the start-up, so one run [5, 14]: 9 s.
        let bound = clairvoyant([(10.0, 1.0), (13.0, 1.0)].into_iter(), 1, 0, 5, 5.0, 20.0);
        assert!((bound.pod_seconds - 9.0).abs() < 1e-9, "{bound:?}");
        assert_eq!(bound.replicas, [(0.0, 0), (5.0, 1), (14.0, 0)]);
    }

    #[test]
    fn the_maximum_caps_the_need() {
        let requests = (0..100).map(|_| (0.0, 1.0));
        let bound = clairvoyant(requests, 1, 1, 4, 0.0, 2.0);
        assert_eq!(bound.peak_replicas, 4);
        assert!((bound.pod_seconds - (2.0 + 3.0)).abs() < 1e-9, "{bound:?}");
    }
}
