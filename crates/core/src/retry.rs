//! Retrying failures that may pass: exponential backoff with jitter and a cap, built on `backon`
//! (the design named `backoff`, which is unmaintained: RUSTSEC-2025-0012).

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use crate::outcome::Interrupted;

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

/// How long a record's work retries a failure that may pass before it gives up, unless the
/// binary is told otherwise (`--give-up-after`).
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(3600);

/// Runs `op` until it succeeds, retrying transient errors with backoff.
///
/// - `Ok(Ok(value))`: it succeeded.
/// - `Ok(Err(error))`: a permanent error; the caller decides what it means.
/// - `Err(Interrupted::Cancelled)`: `cancel` fired first.
/// - `Err(Interrupted::GaveUp)`: transient errors went on for longer than `budget`.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    budget: Duration,
    cancel: &CancellationToken,
    op: F,
) -> Result<Result<T, E>, Interrupted>
where
    E: Classify + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let attempt = op
        .retry(backoff(budget))
        .when(|error: &E| error.is_transient() && !cancel.is_cancelled())
        .notify(|error: &E, delay: Duration| {
            tracing::warn!(what, error = %error, retry_in_ms = delay.as_millis(), "transient failure; retrying");
        });
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Interrupted::Cancelled),
        result = attempt => match result {
            Err(_) if cancel.is_cancelled() => Err(Interrupted::Cancelled),
            Err(error) if error.is_transient() => Err(Interrupted::gave_up(
                what,
                format_args!("still failing after {budget:?} of retries: {error}"),
            )),
            other => Ok(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;
    use std::sync::atomic::{AtomicU32, Ordering};

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

    #[derive(Debug)]
    struct Failure {
        transient: bool,
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failure (transient: {})", self.transient)
        }
    }

    impl Classify for Failure {
        fn is_transient(&self) -> bool {
            self.transient
        }
    }

    #[tokio::test]
    async fn outcomes_are_told_apart() {
        let cancel = CancellationToken::new();
        let budget = Duration::from_millis(300);
        let tries = AtomicU32::new(0);
        let succeeded = retry("op", budget, &cancel, || async {
            if tries.fetch_add(1, Ordering::Relaxed) < 2 {
                Err(Failure { transient: true })
            } else {
                Ok(7)
            }
        })
        .await;
        assert!(matches!(succeeded, Ok(Ok(7))), "{succeeded:?}");

        let permanent = retry("op", budget, &cancel, || async {
            Err::<(), _>(Failure { transient: false })
        })
        .await;
        assert!(matches!(permanent, Ok(Err(_))), "{permanent:?}");

        let gave_up = retry("apply users", budget, &cancel, || async {
            Err::<(), _>(Failure { transient: true })
        })
        .await;
        match gave_up {
            Err(Interrupted::GaveUp(why)) => {
                assert_eq!(why.what, "apply users");
                assert!(why.error.contains("transient: true"), "{why}");
            }
            other => panic!("expected GaveUp, got {other:?}"),
        }

        cancel.cancel();
        let cancelled = retry("op", budget, &cancel, || async {
            Err::<(), _>(Failure { transient: true })
        })
        .await;
        assert!(
            matches!(cancelled, Err(Interrupted::Cancelled)),
            "{cancelled:?}"
        );
    }
}
