//! Named outcomes of work that can end before it is done.
//!
//! "Cancelled" and "gave up" are different things and are never folded into one value: a cancelled
//! batch is read again by whoever owns its partition next and nothing is wrong; a batch whose
//! handler gave up could not be made durable, so its partition cannot make progress — that must be
//! seen (log at ERROR, readiness, a metric) and recovered from (see `runtime`).

use std::fmt;

/// Why a piece of work ended without being done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupted {
    /// Shutdown or a revocation asked it to stop. Not a failure.
    Cancelled,
    /// It could not make progress: a failure that is not the record's fault outlasted its retry
    /// budget, or one that retrying cannot fix.
    GaveUp(GaveUp),
}

impl Interrupted {
    /// Gives up on `what` because of `error`.
    pub fn gave_up(what: impl Into<String>, error: impl fmt::Display) -> Self {
        Self::GaveUp(GaveUp {
            what: what.into(),
            error: error.to_string(),
        })
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cancelled => f.write_str("cancelled before the work was durable"),
            Self::GaveUp(gave_up) => gave_up.fmt(f),
        }
    }
}

impl std::error::Error for Interrupted {}

/// What could not be done, and the last error seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    pub what: String,
    pub error: String,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gave up on {}: {}", self.what, self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giving_up_names_what_and_why() {
        let outcome = Interrupted::gave_up("apply users", "permission denied for table users");
        assert_eq!(
            outcome.to_string(),
            "gave up on apply users: permission denied for table users"
        );
        assert_ne!(outcome, Interrupted::Cancelled);
    }
}
