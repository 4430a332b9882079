//! Capture cost: what Kafka Connect + Debezium spend capturing a burst of changes against what
//! cdcconsumer spends applying the same changes to Cassandra, and how fast each side goes.
//!
//! With the connector paused (Connect's REST API), the bench commits `--capture-changes` single-row
//! changes to PostgreSQL (the latency test's mix); they wait in the replication slot. A paused
//! connector's task is not polled, but Debezium's streaming thread goes on reading the slot into
//! its queue until `max.queue.size` changes wait there, so those are read before the resume.
//! Connect's CPU time (`/proc/<pid>/stat`) is therefore counted from the pause, before the first
//! commit, until the Debezium topics' high watermarks have grown by exactly that many records: all
//! of Connect's work for the burst. Its idle CPU (heartbeats, offset flushes, GC) over a window as
//! long, once the capture has settled, is reported beside it. The capture rate is measured past the
//! queue: from the moment the topics have grown by the queue's size to the last record, every
//! change is read from the slot, decoded, converted and sent while the clock runs.
//! cdcconsumer (release binary, fresh group whose offsets were committed at the watermarks before
//! the burst) then drains exactly those records into a scratch keyspace, timed like the write-rate
//! runs; its CPU time is its whole process's. The scratch keyspace must then hold every inserted
//! row.

use super::*;
use crate::connect::{
    connect_pid, connector, connector_queue_size, connector_state, end_offsets_now, time_capture,
    CaptureEnd, CaptureTiming,
};

/// Commits in flight while the burst is written.
const BURST_CONNECTIONS: usize = 8;

#[derive(Debug)]
pub(super) struct Capture {
    changes: u64,
    users_inserted: u64,
    orders_inserted: u64,
    write_seconds: f64,
    /// Resume → every change in Kafka, and the rate past the queue.
    timing: CaptureTiming,
    /// Debezium's `max.queue.size`: changes it may have read before the resume.
    queue: u64,
    /// Pause → every change in Kafka: the window of `connect_cpu`.
    window_seconds: f64,
    connect_cpu: f64,
    connect_idle_cpu: f64,
    drain: RateSample,
}

/// Commits `total` changes of the latency test's mix, `BURST_CONNECTIONS` at a time (a row's
/// changes never overlap). Returns inserted users and orders.
async fn write_burst(pool: &PgPool, total: u64) -> Result<(u64, u64)> {
    let rows = Arc::new(Mutex::new(Rows::default()));
    let mut tasks: JoinSet<Result<Op>> = JoinSet::new();
    let (mut users, mut orders) = (0, 0);
    let mut count = |op: Op| match op {
        Op::InsertUser(_) => users += 1,
        Op::InsertOrder { .. } => orders += 1,
        Op::UpdateUser(_) | Op::UpdateOrder(_) => {}
    };
    for n in 0..total {
        if tasks.len() >= BURST_CONNECTIONS {
            if let Some(done) = tasks.join_next().await {
                count(done??);
            }
        }
        let op = lock(&rows).next(MIX[usize::try_from(n % 10)?]);
        let (pool, rows) = (pool.clone(), Arc::clone(&rows));
        tasks.spawn(async move {
            commit(&pool, op, n).await?;
            lock(&rows).committed(op);
            Ok(op)
        });
    }
    while let Some(done) = tasks.join_next().await {
        count(done??);
    }
    Ok((users, orders))
}

pub(super) async fn capture(
    ctx: &BenchContext,
    args: &CdcArgs,
    launcher: &Launcher<'_>,
    control: &Session,
    consistency: Consistency,
    cleanup: &mut Cleanup,
) -> Result<Capture> {
    let pid = connect_pid()?;
    let topics = args.cdc.with_partitions(&ctx.brokers).await?;
    let config = ctx.kafka.client_config();
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(BURST_CONNECTIONS)?)
        .connect(&ctx.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    connector_state("RUNNING", Duration::from_secs(60)).await?;
    wait_until_quiet(args.quiet_wait()).await;

    // The drain's group starts where the burst will begin.
    let group = unique_name("bench_cdc_capture_group");
    cleanup.groups.push(group.clone());
    let (c, g, t) = (config.clone(), group.clone(), topics.clone());
    let start = tokio::task::spawn_blocking(move || commit_end_offsets(&c, &g, &t)).await??;
    let start_sum: i64 = start
        .elements()
        .iter()
        .filter_map(|e| e.offset().to_raw())
        .sum();

    let queue = connector_queue_size().await?;
    connector("pause").await?;
    let burst = async {
        connector_state("PAUSED", Duration::from_secs(60)).await?;
        // From here on, everything Connect does is for the burst (or its idle work, below).
        let cpu_before = cpu_seconds(&pid).context("reading Connect's CPU time")?;
        let started = Instant::now();
        let inserted = write_burst(&pool, args.capture_changes).await?;
        let written = started.elapsed();
        let before = end_offsets_now(&config, &topics).await?;
        ensure!(
            before == start_sum,
            "Debezium's topics grew by {} records while the connector was paused",
            before - start_sum
        );
        anyhow::Ok((inserted, written, cpu_before, started))
    }
    .await;
    // Resumed whatever happened: a paused connector would stop the pipeline.
    let resumed = connector("resume").await;
    let ((users_inserted, orders_inserted), written, cpu_before, paused_at) = burst?;
    resumed?;
    pool.close().await;

    // Capture: from the resume to every change in Kafka.
    let timing = time_capture(
        &config,
        &topics,
        start_sum,
        queue,
        Instant::now(),
        CaptureEnd::Exactly(args.capture_changes),
        args.run.run_timeout(),
    )
    .await?;
    let window_seconds = paused_at.elapsed().as_secs_f64();
    let connect_cpu = cpu_seconds(&pid).context("reading Connect's CPU time")? - cpu_before;

    // Connect idle over as long a window, once the capture has settled.
    wait_until_quiet(args.quiet_wait()).await;
    let idle_before = cpu_seconds(&pid).context("reading Connect's CPU time")?;
    tokio::time::sleep(Duration::from_secs_f64(window_seconds)).await;
    let connect_idle_cpu = cpu_seconds(&pid).context("reading Connect's CPU time")? - idle_before;

    // cdcconsumer drains the same records.
    let keyspace = unique_name("bench_cdc_capture_ks");
    cleanup.keyspaces.push(keyspace.clone());
    create_keyspace(control, &args.cassandra.cassandra_nodes, &keyspace).await?;
    wait_until_quiet(args.quiet_wait()).await;
    let drain = run_in_group(
        launcher,
        &args.cdc.cdc_topics,
        &group,
        &keyspace,
        usize::try_from(args.capture_changes)?,
        args,
    )
    .await
    .context("cdcconsumer draining the captured changes")?;
    for (table, expected) in [("users", users_inserted), ("orders", orders_inserted)] {
        let mut query = Statement::new(format!("SELECT count(*) FROM {keyspace}.{table}"));
        query.set_consistency(consistency);
        let (count,): (i64,) = control
            .query_unpaged(query, ())
            .await?
            .into_rows_result()?
            .single_row()?;
        ensure!(
            u64::try_from(count)? == expected,
            "{keyspace}.{table} holds {count} rows, {expected} were inserted"
        );
    }
    drop_keyspace(control, &keyspace).await?;
    cleanup.keyspaces.retain(|k| *k != keyspace);
    Ok(Capture {
        changes: args.capture_changes,
        users_inserted,
        orders_inserted,
        write_seconds: written.as_secs_f64(),
        timing,
        queue,
        window_seconds,
        connect_cpu,
        connect_idle_cpu,
        drain,
    })
}

#[allow(clippy::cast_precision_loss)]
pub(super) fn report_capture(capture: &Capture, write_rate: Option<&WriteRate>, args: &CdcArgs) {
    let per_10k = |cpu: f64| cpu * 10_000.0 / capture.changes as f64;
    let changes = capture.changes as f64;
    let cdc_cpu = capture.drain.cpu_seconds.unwrap_or(f64::NAN);
    let connect_net = capture.connect_cpu - capture.connect_idle_cpu;
    let drain_rate = changes / capture.drain.seconds;
    println!();
    println!(
        "4. Capture cost: {} changes ({} users and {} orders inserted, the rest updates) committed \
         in {:.1} s with the connector paused (Debezium reads up to its max.queue.size, {}, of them \
         before the resume)",
        capture.changes,
        capture.users_inserted,
        capture.orders_inserted,
        capture.write_seconds,
        capture.queue
    );
    println!(
        "   Connect CPU from the pause to the last record in Kafka ({:.1} s): {:.2} s ({:.2} s per \
         10,000 changes; idle over as long: {:.2} s, so {:.2} s per 10,000 above idle)",
        capture.window_seconds,
        capture.connect_cpu,
        per_10k(capture.connect_cpu),
        capture.connect_idle_cpu,
        per_10k(connect_net)
    );
    let live_rate = capture.timing.rate_past_queue();
    match capture.timing.past_queue {
        Some((rest, seconds)) => println!(
            "   Debezium capture: resume → all in Kafka {:.1} s ({:.0} changes/s with the queue); \
             past the queue {rest} changes in {seconds:.1} s: {:.0} changes/s",
            capture.timing.seconds,
            changes / capture.timing.seconds,
            rest as f64 / seconds
        ),
        None => println!(
            "   Debezium capture: resume → all in Kafka {:.1} s ({:.0} changes/s with the queue); \
             no changes past the queue to time (raise --capture-changes)",
            capture.timing.seconds,
            changes / capture.timing.seconds
        ),
    }
    println!(
        "   cdcconsumer drain of the same records: {:.1} s, {drain_rate:.0} changes/s ({} Debezium's \
         rate past the queue; target ≥ 2×); CPU {:.2} s for the whole process ({:.2} s per 10,000 \
         changes); peak RSS {}",
        capture.drain.seconds,
        live_rate.map_or("?×".into(), |rate| format!("{:.2}×", drain_rate / rate)),
        cdc_cpu,
        per_10k(cdc_cpu),
        capture
            .drain
            .peak_rss_kib
            .map_or("?".into(), |kib| format!("{:.1} MiB", mib(kib)))
    );
    println!(
        "   cdcconsumer CPU / Connect CPU: {:.2}× (target ≤ 0.5×; against Connect above idle: {:.2}×)",
        cdc_cpu / capture.connect_cpu,
        cdc_cpu / connect_net
    );
    if let (Some(rate), Some(debezium)) = (write_rate, live_rate) {
        let (ours, grouped) = rate.drain_rates(args);
        println!(
            "   Same run, against Debezium's {debezium:.0} changes/s past its queue: cdcconsumer \
             drained the write-rate backlog at {ours:.0} changes/s ({:.2}×, target ≥ 2×); the bare \
             loop sending grouped requests, Cassandra's own limit for those writes here with \
             nothing of cdcconsumer's in it, at {grouped:.0} changes/s ({:.2}×)",
            ours / debezium,
            grouped / debezium
        );
    }
}
