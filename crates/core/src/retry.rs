//! Retrying transient failures: exponential backoff with jitter and a cap, built on `backon`
//! (the design named `backoff`, which is unmaintained: RUSTSEC-2025-0012).

use std::time::Duration;

use backon::ExponentialBuilder;

/// Whether an error may go away by itself (connection lost, timeout, serialization failure,
/// deadlock, a parent row not there yet) or needs a person (undecodable or invalid input).
pub trait Classify {
    fn is_transient(&self) -> bool;
}

/// The backoff used for database and Kafka writes: 50 ms doubling to at most 5 s, with jitter,
/// giving up once `total` has been spent waiting.
pub fn backoff(total: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn backoff_grows_is_capped_and_ends() {
        let delays: Vec<Duration> = backoff(Duration::from_secs(20)).build().collect();
        assert!(delays.len() > 5, "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(10)),
            "{delays:?}"
        );
        let total: Duration = delays.iter().sum();
        assert!(total <= Duration::from_secs(21), "{total:?}");
    }
}
