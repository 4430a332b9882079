//! `consumer`: applies business events from Kafka to PostgreSQL, one worker per partition.
//! See the crate's library ([`consumer::cli`]) for what a run does.

use clap::Parser;
use consumer::cli::{self, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    options.log.init();
    let shutdown = cdc_core::shutdown::install();
    cli::run(options, shutdown).await
}
