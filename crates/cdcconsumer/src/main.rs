//! `cdcconsumer`: Debezium change events from Kafka into Cassandra, one worker per partition, and
//! `cdcconsumer verify`, which proves Cassandra agrees with PostgreSQL, and `cdcconsumer dlq
//! list|replay` for its dead letters, and `cdcconsumer resnapshot`, which reads one table again
//! through Debezium while the pipeline runs, and `cdcconsumer columns`, the columns added to the
//! mirrored tables. See the crate's library ([`cdcconsumer::cli`]).

fn main() -> anyhow::Result<()> {
    cdcconsumer::cli::main()
}
