//! A supervisor for the consumers, as systemd (`Restart=always`) or Kubernetes would be: a process
//! that exits, or is killed by the schedule, is started again after a second. At the end it is
//! stopped with SIGTERM and must exit 0.
//!
//! Exits the schedule did not cause are kept with the end of the process's log: a consumer that
//! gives up after its `--give-up-after` budget exits non-zero by design and is restarted, so such
//! an exit is reported, not failed; a panic is a failure.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use stack_tests::process::Process;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a dead process stays down before the supervisor starts it again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Builds the command of one incarnation.
type Factory = dyn Fn() -> Result<Command> + Send + Sync;

/// A supervised process; clones share it.
#[derive(Clone)]
pub struct Supervised {
    name: String,
    factory: Arc<Factory>,
    kill: Arc<Notify>,
    stop: CancellationToken,
    task: Arc<Mutex<Option<JoinHandle<End>>>>,
}

impl std::fmt::Debug for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervised")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What the supervisor saw.
#[derive(Debug, Clone, Default)]
pub struct End {
    /// Incarnations after the first.
    pub restarts: u32,
    /// Exits the schedule did not cause, each with the end of its log.
    pub exits: Vec<String>,
    /// Failures: panics, a start that failed, a last stop that was not clean.
    pub unclean: Vec<String>,
}

/// Why the supervisor woke.
enum Wake {
    Exited(Result<std::process::ExitStatus>),
    Kill,
    Stop,
}

impl Supervised {
    /// Starts `factory()`'s command and keeps it running.
    pub fn start(
        name: &str,
        factory: impl Fn() -> Result<Command> + Send + Sync + 'static,
    ) -> Self {
        let supervised = Self {
            name: name.to_owned(),
            factory: Arc::new(factory),
            kill: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            task: Arc::new(Mutex::new(None)),
        };
        let task = tokio::spawn(supervised.clone().supervise());
        *supervised
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
        supervised
    }

    /// The same command with no metrics endpoint: another member of the same consumer groups.
    pub fn command_without_metrics(&self) -> Result<Command> {
        let mut command = (self.factory)()?;
        command.env("METRICS_ADDR", "");
        Ok(command)
    }

    /// SIGKILL to the running incarnation; the supervisor starts the next.
    pub fn kill(&self) {
        self.kill.notify_one();
    }

    /// SIGTERM to the running incarnation, which must exit 0; no more restarts.
    pub async fn stop(self) -> End {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        match task {
            Some(task) => task.await.unwrap_or_else(|error| End {
                unclean: vec![format!("{}: supervisor failed: {error}", self.name)],
                ..End::default()
            }),
            None => End::default(),
        }
    }

    async fn supervise(self) -> End {
        let mut end = End::default();
        let mut first = true;
        while !self.stop.is_cancelled() {
            if !first {
                end.restarts += 1;
                tokio::time::sleep(RESTART_DELAY).await;
            }
            first = false;
            let mut process = match (self.factory)().and_then(|c| Process::spawn(&self.name, c)) {
                Ok(process) => process,
                Err(error) => {
                    end.unclean
                        .push(format!("{}: could not start: {error:#}", self.name));
                    continue;
                }
            };
            let wake = tokio::select! {
                status = process.wait_exit(Duration::MAX) => Wake::Exited(status),
                () = self.kill.notified() => Wake::Kill,
                () = self.stop.cancelled() => Wake::Stop,
            };
            match wake {
                Wake::Exited(status) => {
                    let log = process.log_tail(20);
                    let status = status.map_or_else(|e| format!("{e:#}"), |s| s.to_string());
                    let exit = format!(
                        "{} exited on its own ({status}); its log ends:\n{log}",
                        self.name
                    );
                    println!("chaos: {exit}");
                    if log.contains("panicked") {
                        end.unclean.push(exit.clone());
                    }
                    end.exits.push(exit);
                }
                Wake::Kill => {
                    if let Err(error) = process.kill() {
                        end.unclean
                            .push(format!("{}: could not kill: {error:#}", self.name));
                    }
                }
                Wake::Stop => {
                    if let Err(error) = process.terminate().await {
                        end.unclean
                            .push(format!("{}: last stop not clean: {error:#}", self.name));
                    }
                }
            }
        }
        end
    }
}
