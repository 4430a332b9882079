//! Graceful shutdown on SIGINT (Ctrl-C) and SIGTERM.
//!
//! The first signal cancels the returned token: work loops stop taking new work, finish or hand
//! back what is in flight and report. A second signal means "now": the process exits at once with
//! status 130.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Runs a binary's `main` future on a multi-threaded Tokio runtime (what `#[tokio::main]` does).
///
/// Each binary keeps its `main` in its own library and calls this from there: the release build
/// then compiles the async code once, in the library, instead of again in the binary crate around
/// the runtime's generic entry point (a third less compile time for the cdcconsumer).
pub fn block_on<T, E: From<std::io::Error>>(
    main: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(main)
}

/// Exit status after a second signal.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Starts listening for SIGINT and SIGTERM and returns the token the first one cancels.
///
/// Must be called inside a Tokio runtime. The handlers are in place when this returns, so a signal
/// that arrives right after is never lost to the default action. Should the handlers not install
/// (which only fails when the runtime has no signal driver), the error is logged and the process
/// keeps the default behaviour of those signals.
pub fn install() -> CancellationToken {
    let token = CancellationToken::new();
    let handlers = signal(SignalKind::interrupt())
        .and_then(|interrupt| Ok((interrupt, signal(SignalKind::terminate())?)));
    match handlers {
        Ok((interrupt, terminate)) => {
            tokio::spawn(watch(interrupt, terminate, token.clone()));
        }
        Err(error) => {
            tracing::error!(%error, "cannot install SIGINT/SIGTERM handlers; signals end the process at once");
        }
    }
    token
}

async fn watch(mut interrupt: Signal, mut terminate: Signal, token: CancellationToken) {
    loop {
        let name = tokio::select! {
            Some(()) = interrupt.recv() => "SIGINT",
            Some(()) = terminate.recv() => "SIGTERM",
            else => return,
        };
        if token.is_cancelled() {
            tracing::warn!(
                signal = name,
                code = FORCED_EXIT_CODE,
                "second signal: exiting immediately"
            );
            std::process::exit(FORCED_EXIT_CODE);
        }
        tracing::info!(
            signal = name,
            "shutdown requested: finishing in-flight work (signal again to exit immediately)"
        );
        token.cancel();
    }
}
