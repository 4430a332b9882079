//! `producer`: see README.md. The pipeline logic lands in cdc-core; this binary stays a thin shell.

fn main() -> anyhow::Result<()> {
    cdc_core::logging::init("info", cdc_core::logging::LogFormat::Text);
    tracing::info!("producer is not implemented yet; start the stack with stack/stack.sh up");
    Ok(())
}
