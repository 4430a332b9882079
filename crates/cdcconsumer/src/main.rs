//! `cdcconsumer`: Debezium change events from Kafka into Cassandra, one worker per partition, and
//! `cdcconsumer verify`, which proves Cassandra agrees with PostgreSQL, and `cdcconsumer dlq
//! list|replay` for its dead letters, and `cdcconsumer resnapshot`, which reads one table again
//! through Debezium while the pipeline runs, and `cdcconsumer columns`, the columns added to the
//! mirrored tables. See the crate's library ([`cdcconsumer::cli`]).

use cdcconsumer::cli::{self, Command, Options};
use cdcconsumer::resnapshot;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    match options.command {
        None => {
            options.run.common.log.init();
            cli::run(options.run, cdc_core::shutdown::install()).await
        }
        Some(Command::Verify(args)) => {
            args.common.log.init();
            std::process::exit(cli::verify_exit_code(cli::verify(*args).await))
        }
        Some(Command::Resnapshot(args)) => {
            args.log.init();
            let outcome = resnapshot::run(&args, cdc_core::shutdown::install()).await;
            std::process::exit(resnapshot::exit_code(&outcome))
        }
        Some(Command::Columns(args)) => {
            args.log.init();
            match cdcconsumer::columns::run_command(&args).await {
                Ok(()) => Ok(()),
                Err(error) => {
                    tracing::error!(%error, "cdcconsumer columns");
                    eprintln!("error: {error}");
                    std::process::exit(error.exit_code())
                }
            }
        }
        Some(Command::Dlq(args)) => {
            args.command.log().init();
            std::process::exit(cli::dlq(*args).await)
        }
    }
}
