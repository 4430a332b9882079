//! `consumer`: applies business events from Kafka to PostgreSQL, one worker per partition, and
//! `consumer dlq list|replay` for its dead letters. See the crate's library ([`consumer::cli`]).

use clap::Parser;
use consumer::cli::{self, Command, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    match options.command {
        None => {
            options.run.log.init();
            cli::run(options.run, cdc_core::shutdown::install()).await
        }
        Some(Command::Dlq(args)) => {
            args.command.log().init();
            std::process::exit(cli::dlq(args).await)
        }
    }
}
