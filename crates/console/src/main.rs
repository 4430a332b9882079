use clap::Parser;
use console::cli::{self, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    options.log.init();
    let shutdown = cdc_core::shutdown::install();
    cli::run(options, shutdown).await
}
