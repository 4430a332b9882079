//! `chaos`: the pipeline under a seeded schedule of combined faults, checked like Jepsen's Kafka
//! checker. See the crate's library ([`chaos::run`]).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    let options = chaos::Options::parse();
    options.log.init();
    if options.dry_run {
        chaos::print_schedule(&options)?;
        return Ok(ExitCode::SUCCESS);
    }
    let shutdown = cdc_core::shutdown::install();
    tokio::select! {
        verdict = chaos::run(options) => Ok(if verdict?.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
        () = shutdown.cancelled() => {
            // Dropping the run kills the processes it started; the services come back.
            eprintln!("chaos: interrupted; bringing every service back");
            chaos::faults::heal(&stack_tests::Stack::from_env()?).await;
            Ok(ExitCode::from(130))
        }
    }
}
