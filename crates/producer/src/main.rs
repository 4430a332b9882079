//! `producer`: writes a deterministic stream of User and Order business events to Kafka.
//! See the crate's library ([`producer::cli`]) for what a run does.

use clap::Parser;
use producer::cli::{self, Cli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.log.init();
    let shutdown = cdc_core::shutdown::install();
    cli::run(cli, shutdown).await.map(drop)
}
