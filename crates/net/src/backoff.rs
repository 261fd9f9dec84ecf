//! Randomized exponential backoff, shared by everything that retries (the coordinator's
//! rounds, the router's passes over a key's replicas, `counter-client` and `counter-bench`).

use std::time::Duration;

/// How long to pause before retry number `attempt` (1 for the first retry): uniform in
/// `0..=min(start × 2^attempt, max)` ("full jitter"), so that competitors spread out.
pub fn backoff(attempt: u32, start: Duration, max: Duration) -> Duration {
    let cap = start.saturating_mul(1u32 << attempt.min(16)).min(max);
    let nanos = cap.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(rand::random::<u64>() % nanos.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_then_stay_under_the_cap() {
        let ms = Duration::from_millis;
        for _ in 0..200 {
            assert!(backoff(0, ms(10), ms(200)) <= ms(10));
            assert!(backoff(2, ms(10), ms(200)) <= ms(40));
            assert!(backoff(30, ms(10), ms(200)) <= ms(200));
        }
        // Jittered: not always the same pause.
        let pauses: std::collections::BTreeSet<_> =
            (0..50).map(|_| backoff(5, ms(10), ms(200))).collect();
        assert!(pauses.len() > 10, "{pauses:?}");
        assert_eq!(backoff(3, Duration::ZERO, ms(200)), Duration::ZERO);
    }
}
