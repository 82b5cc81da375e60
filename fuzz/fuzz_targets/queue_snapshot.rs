//! The queue snapshot as the operator reads it from a sidecar's `/queue`: no panic; what is
//! accepted keeps the contract's ranges (docs/sidecar-contract.md), and what the sidecar would
//! send back of it is one line that the operator reads as the same snapshot.
#![no_main]

use asyncpool_contract::queue::{CONTRACT_VERSION, QueueSnapshot};
use libfuzzer_sys::fuzz_target;

/// The contract's bound on a count: larger ones are garbage.
const MAX_COUNT: u64 = 1 << 53;

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = QueueSnapshot::parse(data) else {
        return;
    };
    assert_eq!(snapshot.validate(), Ok(()));
    assert_eq!(snapshot.version, CONTRACT_VERSION);
    for (count, name) in [
        (snapshot.queued, "queued"),
        (snapshot.in_flight, "inFlight"),
        (snapshot.capacity, "capacity"),
        (snapshot.arrived_total, "arrivedTotal"),
        (snapshot.completed_total, "completedTotal"),
    ] {
        assert!(count <= MAX_COUNT, "{name} = {count} accepted");
    }
    assert!(snapshot.completed_total <= snapshot.arrived_total);
    for (seconds, name) in [
        (snapshot.busy_seconds_total, "busySecondsTotal"),
        (snapshot.oldest_in_flight_seconds, "oldestInFlightSeconds"),
    ] {
        assert!(
            seconds.is_finite() && seconds >= 0.0,
            "{name} = {seconds} accepted"
        );
    }
    // The load the scaler adds up cannot overflow.
    assert!(snapshot.load() <= 2 * MAX_COUNT);

    let line = serde_json::to_vec(&snapshot).expect("a snapshot serialises");
    // The watch stream sends one snapshot a line.
    assert!(!line.contains(&b'\n'), "a serialised snapshot spans lines");
    let read_back = QueueSnapshot::parse(&line).unwrap_or_else(|error| {
        panic!(
            "the operator refuses what the sidecar sends ({error}): {}",
            String::from_utf8_lossy(&line)
        )
    });
    assert_eq!(
        read_back,
        snapshot,
        "changed on the way: {}",
        String::from_utf8_lossy(&line)
    );
});
