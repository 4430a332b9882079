//! Retrying transient failures: exponential backoff with jitter and a cap, built on `backon`
//! (the design named `backoff`, which is unmaintained: RUSTSEC-2025-0012).

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use crate::runtime::Cancelled;

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

/// Runs `op` until it succeeds, retrying transient errors with backoff, until `cancel` fires.
/// A permanent error is returned to the caller.
pub async fn retry_until_cancelled<T, E, F, Fut>(
    what: &str,
    cancel: &CancellationToken,
    op: F,
) -> Result<Result<T, E>, Cancelled>
where
    E: Classify + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let attempt = op
        .retry(backoff(Duration::from_secs(3600)))
        .when(|error: &E| error.is_transient() && !cancel.is_cancelled())
        .notify(|error: &E, delay: Duration| {
            tracing::warn!(what, error = %error, retry_in_ms = delay.as_millis(), "transient failure; retrying");
        });
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Cancelled),
        result = attempt => match result {
            Err(error) if error.is_transient() => Err(Cancelled),
            other => Ok(other),
        },
    }
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
