//! `producer`: writes a deterministic stream of User and Order business events to Kafka.
//! See the crate's library ([`producer::cli`]) for what a run does.

fn main() -> anyhow::Result<()> {
    producer::cli::main()
}
