//! `consumer`: applies business events from Kafka to PostgreSQL, one worker per partition, and
//! `consumer dlq list|replay` for its dead letters. See the crate's library ([`consumer::cli`]).

fn main() -> anyhow::Result<()> {
    consumer::cli::main()
}
