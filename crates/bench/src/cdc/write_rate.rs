//! cdcconsumer's write rate into Cassandra against a bare scylla-driver loop (and, with
//! `--breakdown`, the handler in-process), on the same stream of built envelopes.

use super::*;
use cdc_core::retry::Classify;

// ---------------------------------------------------------------------------------------------
// Write rate

/// The four captured envelopes the stream is built from.
#[derive(Debug)]
pub(super) struct Templates {
    user_c: Value,
    user_u: Value,
    order_c: Value,
    order_u: Value,
    /// The fixtures' `amount` encodings (precise decimals, base64 of the unscaled value).
    amounts: Vec<Value>,
}

impl Templates {
    fn load() -> Result<Self> {
        let parse = |name: &str, text: &str| -> Result<Value> {
            let value: Value =
                serde_json::from_str(text).with_context(|| format!("fixture {name}"))?;
            ensure!(
                value["key"]["payload"].is_object()
                    && value["value"]["payload"]["source"].is_object(),
                "fixture {name} is not a keyed Debezium change record"
            );
            Ok(value)
        };
        let order_c = parse("orders_c", ORDERS_C)?;
        let order_u = parse("orders_u", ORDERS_U)?;
        let amounts = [&order_c, &order_u]
            .iter()
            .map(|t| t["value"]["payload"]["after"]["amount"].clone())
            .filter(Value::is_string)
            .collect::<Vec<_>>();
        ensure!(!amounts.is_empty(), "the order fixtures carry no amount");
        Ok(Self {
            user_c: parse("users_c", USERS_C)?,
            user_u: parse("users_u", USERS_U)?,
            order_c,
            order_u,
            amounts,
        })
    }
}

/// Position of the next change in the made-up WAL.
#[derive(Debug)]
pub(super) struct Position {
    lsn: i64,
    tx_id: i64,
    commit_micros: i64,
}

impl Position {
    fn advance(&mut self) {
        self.lsn += 1_064;
        self.tx_id += 1;
        self.commit_micros += 50;
    }
}

/// One Kafka record (key, value) from a template with the given images and position.
pub(super) fn envelope(
    template: &Value,
    id: Uuid,
    op: &str,
    before: Option<&Value>,
    after: &Value,
    at: &Position,
) -> Result<(String, Vec<u8>)> {
    let mut record = template.clone();
    record["key"]["payload"]["id"] = Value::from(id.to_string());
    let payload = &mut record["value"]["payload"];
    payload["op"] = Value::from(op);
    payload["before"] = before.cloned().unwrap_or(Value::Null);
    payload["after"] = after.clone();
    let emitted = at.commit_micros + 150_000;
    payload["ts_ms"] = Value::from(emitted / 1000);
    payload["ts_us"] = Value::from(emitted);
    payload["ts_ns"] = Value::from(emitted * 1000);
    let source = &mut payload["source"];
    source["lsn"] = Value::from(at.lsn);
    source["txId"] = Value::from(at.tx_id);
    source["sequence"] = Value::from(format!("[\"{}\",\"{}\"]", at.lsn - 376, at.lsn));
    source["ts_ms"] = Value::from(at.commit_micros / 1000);
    source["ts_us"] = Value::from(at.commit_micros);
    source["ts_ns"] = Value::from(at.commit_micros * 1000);
    // As Kafka Connect's JSON converter writes a value: compact, the schema before the payload
    // (a JSON tree would write its keys sorted, the payload first).
    let value = &record["value"];
    let value = format!(
        r#"{{"schema":{},"payload":{}}}"#,
        value["schema"], value["payload"]
    );
    Ok((serde_json::to_string(&record["key"])?, value.into_bytes()))
}

pub(super) fn zoned(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

pub(super) const FIRST_NAMES: &[&str] = &[
    "Janessa", "Grady", "Amara", "Tobias", "Lena", "Marco", "Priya", "Elias", "Noor", "Ingrid",
];
pub(super) const LAST_NAMES: &[&str] = &[
    "Gleichner",
    "Murazik",
    "Bechtelar",
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Castillo",
];
pub(super) const PRODUCTS: &[&str] = &[
    "Backpack",
    "Phone charger",
    "Desk lamp",
    "Coffee grinder",
    "Running shoes",
    "Water bottle",
    "Headphones",
];

pub(super) fn user_image(
    id: Uuid,
    n: usize,
    surname: usize,
    version: i64,
    created: DateTime<Utc>,
) -> Value {
    let first = FIRST_NAMES[n % FIRST_NAMES.len()];
    let last = LAST_NAMES[surname % LAST_NAMES.len()];
    let updated = created + chrono::Duration::seconds(version - 1);
    json!({
        "id": id.to_string(),
        "name": format!("{first} {last}"),
        "email": format!("{}.{}.{n}@example.com", first.to_lowercase(), LAST_NAMES[n % LAST_NAMES.len()].to_lowercase()),
        "created_at": zoned(created),
        "updated_at": zoned(updated),
        "deleted_at": null,
        "version": version,
    })
}

pub(super) fn order_image(
    id: Uuid,
    user_id: Uuid,
    n: usize,
    version: i64,
    created: DateTime<Utc>,
    amount: &Value,
) -> Value {
    let status = ["PLACED", "SHIPPED", "DELIVERED"][usize::try_from(version - 1).unwrap_or(0) % 3];
    let updated = created + chrono::Duration::seconds(version - 1);
    json!({
        "id": id.to_string(),
        "user_id": user_id.to_string(),
        "product": PRODUCTS[n % PRODUCTS.len()],
        "quantity": 1 + n % 4,
        "amount": amount,
        "status": status,
        "order_date": created.date_naive().signed_duration_since(chrono::NaiveDate::default()).num_days(),
        "created_at": zoned(created),
        "updated_at": zoned(updated),
        "deleted_at": null,
        "version": version,
    })
}

/// The write-rate stream: Kafka records, and the same changes as planned writes.
#[derive(Debug)]
pub(super) struct RateStream {
    records: Vec<Record>,
    /// Each change's writes and its LSN, in stream order.
    planned: Vec<(Vec<Write>, i64)>,
    user_changes: usize,
    order_changes: usize,
    users: usize,
    orders: usize,
}

impl RateStream {
    fn changes(&self) -> usize {
        self.user_changes + self.order_changes
    }

    /// CQL writes in all.
    fn writes(&self) -> usize {
        self.planned.iter().map(|(writes, _)| writes.len()).sum()
    }

    /// The positions the stream of `users` and `orders` spans, with room to spare: users are
    /// created and updated, orders created and updated twice, 1,064 apart.
    fn span(users: usize, orders: usize) -> i64 {
        let changes = i64::try_from(users * 2 + orders * 3).unwrap_or(i64::MAX / 4_256);
        changes.saturating_mul(2 * 1_064)
    }

    /// The stream, its positions rising from `first_lsn`. By default every row is created before
    /// any is updated, so a batch never holds two changes of one row; with `adjacent` each row's
    /// changes are side by side (a user's two, then each of its orders' three).
    fn build(users: usize, orders: usize, first_lsn: i64, adjacent: bool) -> Result<Self> {
        ensure!(users > 0, "--users must be positive");
        let templates = Templates::load()?;
        let now = Utc::now();
        let mut at = Position {
            lsn: first_lsn,
            tx_id: 100_000,
            commit_micros: now.timestamp_micros(),
        };
        let created = now - chrono::Duration::hours(1);
        let user_ids: Vec<Uuid> = (0..users).map(|_| Uuid::new_v4()).collect();
        let order_ids: Vec<Uuid> = (0..orders).map(|_| Uuid::new_v4()).collect();
        let owner = |n: usize| user_ids[n % users];
        let amount = |n: usize| &templates.amounts[n % templates.amounts.len()];
        // A user's change: created (version 1) or updated (2).
        let user_change = |n: usize, version: i64, at: &Position| {
            let id = user_ids[n];
            if version == 1 {
                let after = user_image(id, n, n, 1, created);
                envelope(&templates.user_c, id, "c", None, &after, at)
            } else {
                let before = user_image(id, n, n, 1, created);
                let after = user_image(id, n, n + 3, 2, created);
                envelope(&templates.user_u, id, "u", Some(&before), &after, at)
            }
        };
        // An order's change: created (version 1) or updated (2, 3).
        let order_change = |m: usize, version: i64, at: &Position| {
            let (id, user) = (order_ids[m], owner(m));
            let after = order_image(id, user, m, version, created, amount(m));
            if version == 1 {
                envelope(&templates.order_c, id, "c", None, &after, at)
            } else {
                let before = order_image(id, user, m, version - 1, created, amount(m));
                envelope(&templates.order_u, id, "u", Some(&before), &after, at)
            }
        };
        // In WAL order: (kind, index, version).
        let mut order: Vec<(EntityKind, usize, i64)> = Vec::with_capacity(2 * users + 3 * orders);
        if adjacent {
            for n in 0..users {
                order.extend([(EntityKind::User, n, 1), (EntityKind::User, n, 2)]);
                for m in (n..orders).step_by(users) {
                    order.extend((1..=3).map(|version| (EntityKind::Order, m, version)));
                }
            }
        } else {
            // Creates first (each user followed by its orders), then the updates.
            for n in 0..users {
                order.push((EntityKind::User, n, 1));
                order.extend(
                    (n..orders)
                        .step_by(users)
                        .map(|m| (EntityKind::Order, m, 1)),
                );
            }
            order.extend((0..users).map(|n| (EntityKind::User, n, 2)));
            for version in 2..=3 {
                order.extend((0..orders).map(|m| (EntityKind::Order, m, version)));
            }
        }
        let mut records = Vec::with_capacity(order.len());
        for (kind, n, version) in order {
            let (key, payload) = match kind {
                EntityKind::User => user_change(n, version, &at)?,
                EntityKind::Order => order_change(n, version, &at)?,
            };
            records.push(Record { kind, key, payload });
            at.advance();
        }
        // The writes cdcconsumer will derive, through its own decoder and planner.
        let mut planned = Vec::with_capacity(records.len());
        for record in &records {
            let parsed = debezium::parse(Some(record.key.as_bytes()), Some(&record.payload))
                .context("a built envelope does not parse")?;
            match plan::plan(&parsed, &Encoding::default(), &Registry::default())
                .context("a built envelope")?
            {
                Planned::Writes(plan) => {
                    planned.push((plan.writes, plan.lsn));
                }
                other => bail!("a built envelope planned as {other:?}"),
            }
        }
        Ok(Self {
            records,
            planned,
            user_changes: 2 * users,
            order_changes: 3 * orders,
            users,
            orders,
        })
    }

    /// (table, rows, sum of version) each table must hold afterwards.
    fn expected(&self) -> [(&'static str, i64, i64); 3] {
        let users = i64::try_from(self.users).unwrap_or(i64::MAX);
        let orders = i64::try_from(self.orders).unwrap_or(i64::MAX);
        [
            ("users", users, 2 * users),
            ("orders", orders, 3 * orders),
            ("orders_by_user", orders, 3 * orders),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    /// The cdcconsumer binary.
    Ours,
    /// `Statements::execute_all` over every change (one request each, as cdcconsumer sends them),
    /// this many in flight.
    Bare(usize),
    /// `Statements::execute` over every write (a change's writes as separate requests), this many
    /// in flight.
    BarePerWrite(usize),
    /// `Statements::execute_group` over consecutive changes packed as cdcconsumer packs a batch's
    /// keys (as many as fit one request), this many requests in flight.
    BareGrouped(usize),
    /// `CdcHandler::handle` in this process on batches of `--max-batch` records per partition,
    /// partitions in parallel: cdcconsumer without Kafka, the runtime and the process.
    Handler,
}

impl Variant {
    fn label(self, args: &CdcArgs, partitions: (i32, i32)) -> String {
        match self {
            Self::Ours => format!(
                "cdcconsumer binary (ours), {} partitions × {} lanes",
                partitions.0 + partitions.1,
                args.lanes
            ),
            Self::Bare(in_flight) => {
                format!("bare scylla loop, execute_all per change, {in_flight} in flight")
            }
            Self::BarePerWrite(in_flight) => {
                format!("bare scylla loop, execute per write, {in_flight} in flight")
            }
            Self::BareGrouped(in_flight) => {
                format!("bare scylla loop, changes grouped, {in_flight} in flight")
            }
            Self::Handler => "  CdcHandler in-process, same batches, no Kafka".to_owned(),
        }
    }
}

/// One measured write-rate run.
#[derive(Debug, Clone)]
pub(super) struct RateSample {
    round: u32,
    pub(super) seconds: f64,
    /// cdcconsumer: spawn → last change applied.
    wall: Option<f64>,
    pub(super) peak_rss_kib: Option<u64>,
    /// CPU time: cdcconsumer's whole process (start-up included); in-process variants, this
    /// process during the timed part.
    pub(super) cpu_seconds: Option<f64>,
    summary: Option<String>,
    /// cdcconsumer's warnings and errors (it runs at `--log-level warn`), or the bare loop's
    /// retried writes: count and the last.
    warnings: Option<(usize, String)>,
    /// cdcconsumer's batches: how many, and their summed duration (s).
    batches: Option<(f64, f64)>,
    /// cdcconsumer's writes left out (a newer write of the same row in the batch replaced them).
    left_out: Option<f64>,
    busy_before: Option<f64>,
}

#[derive(Debug)]
pub(super) struct WriteRate {
    changes: usize,
    writes: usize,
    user_changes: usize,
    order_changes: usize,
    partitions: (i32, i32),
    variants: Vec<Variant>,
    /// Samples per index into `variants`.
    samples: BTreeMap<usize, Vec<RateSample>>,
    fill_seconds: f64,
}

impl WriteRate {
    /// Median changes per second of cdcconsumer and of the bare loop sending grouped requests.
    #[allow(clippy::cast_precision_loss)]
    pub(super) fn drain_rates(&self, args: &CdcArgs) -> (f64, f64) {
        let in_flight =
            usize::try_from(self.partitions.0 + self.partitions.1).unwrap_or(0) * args.lanes;
        let rate = |samples: &[RateSample]| {
            self.changes as f64 / median(&samples.iter().map(|s| s.seconds).collect::<Vec<_>>())
        };
        (
            rate(self.of(Variant::Ours)),
            rate(self.of(Variant::BareGrouped(in_flight))),
        )
    }

    fn of(&self, variant: Variant) -> &[RateSample] {
        self.variants
            .iter()
            .position(|v| *v == variant)
            .and_then(|i| self.samples.get(&i))
            .map_or(&[], Vec::as_slice)
    }
}

/// PostgreSQL's current WAL position, as an LSN number.
async fn current_wal(database_url: &str) -> Result<i64> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let (lsn,): (i64,) = sqlx::query_as("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(lsn)
}

pub(super) async fn write_rate(
    ctx: &BenchContext,
    args: &CdcArgs,
    launcher: &Launcher<'_>,
    control: &Session,
    consistency: Consistency,
    partitions: (i32, i32),
    cleanup: &mut Cleanup,
) -> Result<WriteRate> {
    // cdcconsumer refuses positions beyond PostgreSQL's WAL: the stream ends below it.
    let wal = current_wal(&ctx.database_url).await?;
    let span = RateStream::span(args.users, args.orders);
    ensure!(
        wal > span,
        "PostgreSQL's WAL is at {wal}, below the {span} positions the stream spans"
    );
    let stream = RateStream::build(args.users, args.orders, wal - span, args.adjacent)?;
    let rf = args.run.replication_factor;
    let (users_topic, orders_topic) =
        common::business_topics(&ctx.brokers, cleanup, "bench_cdc", partitions, rf).await?;
    let mut producer_config = producer::send::client_config(ctx.kafka.client_config());
    producer_config.set("compression.type", &args.backlog_compression);
    let records = stream.records.clone();
    let (u, o) = (users_topic.clone(), orders_topic.clone());
    let timeout = args.run.run_timeout();
    let fill =
        tokio::task::spawn_blocking(move || send_all(&producer_config, &records, &u, &o, timeout))
            .await??;
    tracing::info!(
        changes = stream.changes(),
        writes = stream.writes(),
        seconds = fill.as_secs_f64(),
        "wrote the Debezium envelopes to the scratch topics"
    );

    let topics = [users_topic, orders_topic];
    let in_flight = usize::try_from(partitions.0 + partitions.1)? * args.lanes;
    let mut variants = vec![
        Variant::Ours,
        Variant::Bare(in_flight),
        Variant::BarePerWrite(in_flight),
        Variant::BareGrouped(in_flight),
    ];
    let mut partitioned = Vec::new();
    if args.breakdown {
        variants.push(Variant::Handler);
        // Once the users partitions are done, only the orders partitions are writing.
        variants.push(Variant::Bare(usize::try_from(partitions.1)? * args.lanes));
        partitioned = partition_records(&stream.records, &topics, partitions)?;
    }
    let mut samples: BTreeMap<usize, Vec<RateSample>> = BTreeMap::new();
    for round in 0..args.run.runs {
        // Rotate the order every round so no variant always runs first.
        let n = variants.len();
        for i in 0..n {
            let index = (i + round as usize) % n;
            let variant = variants[index];
            let label = variant.label(args, partitions);
            let keyspace = unique_name("bench_cdc_ks");
            cleanup.keyspaces.push(keyspace.clone());
            create_keyspace(control, &args.cassandra.cassandra_nodes, &keyspace).await?;
            let busy_before = wait_until_quiet(args.quiet_wait()).await;
            let sample = match variant {
                Variant::Ours => {
                    run_ours(
                        launcher,
                        &topics,
                        &keyspace,
                        stream.changes(),
                        args,
                        cleanup,
                    )
                    .await
                }
                Variant::Bare(in_flight) => {
                    let units = stream
                        .planned
                        .iter()
                        .map(|(w, ts)| vec![(w.as_slice(), *ts)]);
                    run_bare(args, &keyspace, consistency, units, in_flight).await
                }
                Variant::BarePerWrite(in_flight) => {
                    let units = stream
                        .planned
                        .iter()
                        .flat_map(|(w, ts)| w.iter().map(|w| vec![(std::slice::from_ref(w), *ts)]));
                    run_bare(args, &keyspace, consistency, units, in_flight).await
                }
                Variant::BareGrouped(in_flight) => {
                    let units = grouped(&stream.planned).into_iter();
                    run_bare(args, &keyspace, consistency, units, in_flight).await
                }
                Variant::Handler => {
                    run_handler(args, &ctx.kafka, &keyspace, consistency, &partitioned).await
                }
            }
            .with_context(|| format!("round {}: {label}", round + 1))?;
            let sample = RateSample {
                round,
                busy_before,
                ..sample
            };
            check_rows(control, &keyspace, consistency, &stream)
                .await
                .with_context(|| format!("round {}: {label}", round + 1))?;
            drop_keyspace(control, &keyspace).await?;
            cleanup.keyspaces.retain(|k| *k != keyspace);
            tracing::info!(
                round = round + 1,
                variant = label,
                seconds = format!("{:.3}", sample.seconds),
                changes_per_sec = format!("{:.0}", stream.changes() as f64 / sample.seconds),
                "measured"
            );
            samples.entry(index).or_default().push(sample);
        }
    }
    Ok(WriteRate {
        changes: stream.changes(),
        writes: stream.writes(),
        user_changes: stream.user_changes,
        order_changes: stream.order_changes,
        partitions,
        variants,
        samples,
        fill_seconds: fill.as_secs_f64(),
    })
}

/// The records as the partitions of the two topics would hold them (by a hash of the key, in
/// stream order within a partition).
pub(super) fn partition_records(
    records: &[Record],
    topics: &[String; 2],
    partitions: (i32, i32),
) -> Result<Vec<Vec<OwnedMessage>>> {
    let counts = [partitions.0, partitions.1];
    let mut queues: Vec<Vec<OwnedMessage>> =
        vec![Vec::new(); usize::try_from(partitions.0 + partitions.1)?];
    for record in records {
        let table = match record.kind {
            EntityKind::User => 0,
            EntityKind::Order => 1,
        };
        let mut hasher = DefaultHasher::new();
        record.key.hash(&mut hasher);
        let partition = i32::try_from(hasher.finish() % u64::try_from(counts[table])?)?;
        let queue = usize::try_from(if table == 0 {
            partition
        } else {
            partitions.0 + partition
        })?;
        let offset = i64::try_from(queues[queue].len())?;
        queues[queue].push(OwnedMessage::new(
            Some(record.payload.clone()),
            Some(record.key.clone().into_bytes()),
            topics[table].clone(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        ));
    }
    Ok(queues)
}

pub(super) async fn run_ours(
    launcher: &Launcher<'_>,
    topics: &[String],
    keyspace: &str,
    changes: usize,
    args: &CdcArgs,
    cleanup: &mut Cleanup,
) -> Result<RateSample> {
    let group = unique_name("bench_cdc_group");
    cleanup.groups.push(group.clone());
    run_in_group(launcher, topics, &group, keyspace, changes, args).await
}

/// cdcconsumer in `group` until it has applied `changes` changes, timed from the last metrics
/// poll showing nothing consumed to the first showing them all applied.
pub(super) async fn run_in_group(
    launcher: &Launcher<'_>,
    topics: &[String],
    group: &str,
    keyspace: &str,
    changes: usize,
    args: &CdcArgs,
) -> Result<RateSample> {
    let metrics_addr = free_metrics_addr()?;
    let command = launcher.command(
        topics,
        group,
        keyspace,
        args.idle_timeout_secs,
        &metrics_addr,
    );
    let spawned = Instant::now();
    let mut subject = Subject::spawn(command)?;
    let total = u64::try_from(changes)?;
    let mut last_idle = spawned;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (done, batches, left_out) = loop {
        tick.tick().await;
        let asked = Instant::now();
        let text = scrape(&metrics_addr).await.unwrap_or_default();
        let counts = Counts::parse(&text);
        if counts.consumed == 0 {
            last_idle = asked;
        }
        if counts.applied >= total {
            let batches = (
                metric_sum(&text, "cdc_batch_duration_seconds_count"),
                metric_sum(&text, "cdc_batch_duration_seconds_sum"),
            );
            let left_out = metric_sum(&text, "cdc_writes_left_out_total");
            break (Instant::now(), batches, left_out);
        }
        if counts.dead_lettered > 0 {
            let stderr = subject.kill().await;
            bail!(
                "cdcconsumer dead-lettered {} records of a valid stream:\n{stderr}",
                counts.dead_lettered
            );
        }
        if subject.child.try_wait()?.is_some() || spawned.elapsed() > args.run.run_timeout() {
            let stderr = subject.kill().await;
            bail!(
                "cdcconsumer stopped (or ran out of time) at {counts:?} of {total} changes:\n{stderr}"
            );
        }
    };
    let finished = subject
        .finish(Duration::from_secs(args.idle_timeout_secs + 60))
        .await?;
    ensure!(
        finished.status.success(),
        "cdcconsumer exited with {}:\n{}",
        finished.status,
        tail(&finished.stderr, 40)
    );
    Ok(RateSample {
        round: 0,
        seconds: done.duration_since(last_idle).as_secs_f64(),
        wall: Some(done.duration_since(spawned).as_secs_f64()),
        peak_rss_kib: finished.peak_rss_kib,
        cpu_seconds: finished.cpu_seconds,
        summary: Some(summary_lines(&finished.stdout)),
        warnings: Some(warnings(&finished.stderr)),
        batches: Some(batches),
        left_out: Some(left_out),
        busy_before: None,
    })
}

/// Prints each sample's count of `warnings` (cdcconsumer's logged warnings, the bare loop's
/// retried writes) under `label`, and the last message of the last sample that has one.
fn print_counted(samples: &[RateSample], label: &str) {
    let counts: Vec<String> = samples
        .iter()
        .filter_map(|s| s.warnings.as_ref().map(|(n, _)| n.to_string()))
        .collect();
    println!("   {label}: {}", counts.join(" "));
    if let Some((_, last)) = samples
        .iter()
        .filter_map(|s| s.warnings.as_ref())
        .rfind(|(n, _)| *n > 0)
    {
        println!("     last: {last}");
    }
}

/// Attempts per write in the bare loop. A write Cassandra did not acknowledge in time (a node
/// overloaded on a shared machine) is tried again, as cdcconsumer would, instead of ending the
/// run; the retries are counted and reported with the round.
const BARE_ATTEMPTS: u32 = 5;
/// The wait before a bare write's next attempt, times the attempts so far.
const BARE_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Consecutive changes packed as cdcconsumer packs a batch's keys: each group as large as still
/// fits one request.
fn grouped(planned: &[(Vec<Write>, i64)]) -> Vec<Vec<(&[Write], i64)>> {
    cassandra::pack_groups(
        planned.iter().map(|(writes, ts)| (writes.as_slice(), *ts)),
        |(writes, _)| (writes.len(), writes.iter().map(Write::approx_bytes).sum()),
    )
}

/// Runs each unit of writes through [`Statements::execute_all`] when it is one change's (or a
/// single write), or [`Statements::execute_group`] when it is several changes', `in_flight` at
/// once.
pub(super) async fn run_bare<'a>(
    args: &CdcArgs,
    keyspace: &str,
    consistency: Consistency,
    units: impl Iterator<Item = Vec<(&'a [Write], i64)>>,
    in_flight: usize,
) -> Result<RateSample> {
    let session = cassandra::connect(&args.cassandra.cassandra_nodes).await?;
    let statements = retry_schema("preparing the sink's statements", || {
        Statements::prepare(&session, keyspace, consistency)
    })
    .await?;
    let retried = AtomicU64::new(0);
    let last_retried = Mutex::new(String::new());
    let cpu_before = cpu_seconds("self");
    let started = Instant::now();
    stream::iter(units)
        .map(|unit| {
            let (statements, session, retried, last_retried) =
                (&statements, &session, &retried, &last_retried);
            async move {
                let together: Vec<(&Write, i64)> = match unit.as_slice() {
                    [_] => Vec::new(),
                    changes => changes
                        .iter()
                        .flat_map(|(writes, ts)| writes.iter().map(move |w| (w, *ts)))
                        .collect(),
                };
                let mut attempt = 1;
                loop {
                    let sent = match unit.as_slice() {
                        [(writes, ts)] => statements.execute_all(session, writes, *ts).await,
                        _ => statements.execute_group(session, &together).await,
                    };
                    match sent {
                        Ok(()) => return Ok(()),
                        Err(error) if attempt < BARE_ATTEMPTS && error.is_transient() => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut last) = last_retried.lock() {
                                *last = error.to_string();
                            }
                            tokio::time::sleep(BARE_RETRY_AFTER * attempt).await;
                            attempt += 1;
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
        })
        .buffer_unordered(in_flight)
        .try_for_each(|()| futures::future::ready(Ok(())))
        .await
        .context("a bare write failed")?;
    let seconds = started.elapsed().as_secs_f64();
    let retried = usize::try_from(retried.into_inner()).unwrap_or(usize::MAX);
    let last_retried = last_retried.into_inner().unwrap_or_default();
    Ok(RateSample {
        round: 0,
        seconds,
        wall: None,
        peak_rss_kib: None,
        cpu_seconds: cpu_seconds("self").zip(cpu_before).map(|(a, b)| a - b),
        summary: None,
        warnings: Some((retried, last_retried)),
        batches: None,
        left_out: None,
        busy_before: None,
    })
}

pub(super) async fn run_handler(
    args: &CdcArgs,
    kafka: &KafkaArgs,
    keyspace: &str,
    consistency: Consistency,
    partitioned: &[Vec<OwnedMessage>],
) -> Result<RateSample> {
    let session = cassandra::connect(&args.cassandra.cassandra_nodes).await?;
    let statements = retry_schema("preparing the sink's statements", || {
        Statements::prepare(&session, keyspace, consistency)
    })
    .await?;
    let metrics = Metrics::default();
    let columns = MirroredColumns::load(&session, keyspace).await?;
    let handler = Arc::new(CdcHandler {
        columns: Arc::new(columns),
        session: Arc::new(session),
        statements,
        dlq: cdc_core::dlq::DeadLetters::new(
            cdc_core::dlq::producer(kafka.client_config())?,
            cdc_core::retry::DEFAULT_GIVE_UP_AFTER,
        ),
        cdc_metrics: CdcMetrics::register(&metrics),
        metrics: metrics.clone(),
        lanes: args.lanes,
        gates: KeyGates::default(),
        encoding: Encoding::default(),
        give_up_after: cdc_core::retry::DEFAULT_GIVE_UP_AFTER,
        positions: None,
    });
    let cancel = CancellationToken::new();
    let cpu_before = cpu_seconds("self");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for queue in partitioned {
        let (handler, cancel, queue) = (Arc::clone(&handler), cancel.clone(), queue.clone());
        let (max_batch, depth) = (args.max_batch, usize::from(args.pipeline));
        tasks.spawn(async move {
            // As the runtime does: up to `depth` batches in flight, started in order.
            let mut in_flight = FuturesOrdered::new();
            for batch in queue.chunks(max_batch) {
                if in_flight.len() >= depth {
                    finish_batch(in_flight.next().await)?;
                }
                in_flight.push_back(start_batch(&handler, batch.to_vec(), &cancel).await);
            }
            while let Some(outcome) = in_flight.next().await {
                finish_batch(Some(outcome))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self").zip(cpu_before).map(|(a, b)| a - b);
    let counts = Counts::parse(&metrics.render());
    ensure!(
        counts.dead_lettered == 0,
        "the handler dead-lettered {} records",
        counts.dead_lettered
    );
    Ok(RateSample {
        round: 0,
        seconds,
        wall: None,
        peak_rss_kib: None,
        cpu_seconds: cpu,
        summary: None,
        warnings: None,
        batches: None,
        left_out: None,
        busy_before: None,
    })
}

pub(super) fn finish_batch(outcome: Option<BatchOutcome>) -> Result<()> {
    match outcome {
        Some((Ok(()), _)) => Ok(()),
        _ => bail!("the handler gave up on a batch"),
    }
}

/// Every table holds every row at its final version (count and sum of `version`).
pub(super) async fn check_rows(
    session: &Session,
    keyspace: &str,
    consistency: Consistency,
    stream: &RateStream,
) -> Result<()> {
    for (table, rows, versions) in stream.expected() {
        let mut statement = Statement::new(format!(
            "SELECT count(*), sum(version) FROM {keyspace}.{table}"
        ));
        statement.set_consistency(consistency);
        statement.set_request_timeout(Some(Duration::from_secs(60)));
        let result = session
            .query_unpaged(statement, ())
            .await?
            .into_rows_result()?;
        let found = result.maybe_first_row::<(i64, Option<i64>)>()?;
        let (count, sum) = found.map_or((0, None), |(c, s)| (c, s));
        ensure!(
            count == rows && sum == Some(versions),
            "{keyspace}.{table}: {count} rows with versions summing to {sum:?}, expected {rows} \
             rows summing to {versions}"
        );
    }
    Ok(())
}

pub(super) fn report_write_rate(args: &CdcArgs, rate: &WriteRate) {
    let changes = rate.changes as f64;
    let writes = rate.writes as f64;
    let seconds = |samples: &[RateSample]| -> f64 {
        median(&samples.iter().map(|s| s.seconds).collect::<Vec<_>>())
    };
    let in_flight =
        usize::try_from(rate.partitions.0 + rate.partitions.1).unwrap_or(0) * args.lanes;
    let ours = rate.of(Variant::Ours);
    let bare = rate.of(Variant::Bare(in_flight));
    let reference = seconds(bare);
    println!();
    println!(
        "1. write rate: {} changes ({} users c+u on {} partitions, {} orders c+u+u on {} \
         partitions; {}) = {} CQL writes into an empty scratch keyspace; median of {} runs, \
         order rotating",
        rate.changes,
        rate.user_changes,
        rate.partitions.0,
        rate.order_changes,
        rate.partitions.1,
        if args.adjacent {
            "each row's changes side by side"
        } else {
            "every row created before any is updated"
        },
        rate.writes,
        args.run.runs
    );
    println!(
        "   cdcconsumer timed from its last /metrics poll with nothing consumed to the first with \
         every change applied (polled every {} ms); in-process variants from their first write to \
         the last acknowledgement",
        PROGRESS_EVERY.as_millis()
    );
    println!(
        "   CPU s: user + system CPU time (median); cdcconsumer's whole process, start-up and idle \
         wait included; in-process variants, this process while timed (scylla driver included)"
    );
    println!();
    println!(
        "{:<58} {:>9} {:>12} {:>11} {:>9} {:>7}   runs (s)",
        "variant", "seconds", "changes/s", "writes/s", "vs bare", "CPU s"
    );
    for (index, variant) in rate.variants.iter().enumerate() {
        let samples = rate.samples.get(&index).map_or(&[][..], Vec::as_slice);
        let median_seconds = seconds(samples);
        let each: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.2}", s.seconds))
            .collect();
        let cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu_seconds).collect();
        println!(
            "{:<58} {:>9.3} {:>12.0} {:>11.0} {:>8.2}x {:>7.2}   {}",
            variant.label(args, rate.partitions),
            median_seconds,
            changes / median_seconds,
            writes / median_seconds,
            reference / median_seconds,
            median(&cpu),
            each.join(" ")
        );
    }
    let per_round = |baseline: &[RateSample]| -> String {
        ours.iter()
            .filter_map(|o| {
                let b = baseline.iter().find(|b| b.round == o.round)?;
                Some(format!("{:.2}x", b.seconds / o.seconds))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!();
    println!(
        "   ours / bare per round: {} (target ≥ 0.90x); ours / bare per write: {}; ours / bare \
         grouped: {}",
        per_round(bare),
        per_round(rate.of(Variant::BarePerWrite(in_flight))),
        per_round(rate.of(Variant::BareGrouped(in_flight)))
    );
    let walls: Vec<f64> = ours.iter().filter_map(|s| s.wall).collect();
    println!(
        "   cdcconsumer spawn → last change applied (start-up included): median {:.2} s",
        median(&walls)
    );
    let batches: Vec<String> = ours
        .iter()
        .filter_map(|s| s.batches)
        .map(|(count, sum)| format!("{count:.0} × {:.0} ms", 1000.0 * sum / count.max(1.0)))
        .collect();
    println!(
        "   cdcconsumer batches per run (count × mean duration; partitions work in parallel): {}",
        batches.join(", ")
    );
    let left_out: Vec<String> = ours
        .iter()
        .filter_map(|s| s.left_out)
        .map(|n| format!("{:.0}", n.max(0.0)))
        .collect();
    println!(
        "   cdcconsumer writes left out per run (a newer write of the row in the same batch \
         replaced them; the bare loops send all {}): {}",
        rate.writes,
        left_out.join(", ")
    );
    let rss: Vec<f64> = ours
        .iter()
        .filter_map(|s| s.peak_rss_kib.map(mib))
        .collect();
    println!(
        "   cdcconsumer peak RSS at full speed (VmHWM, sampled every {} ms): median {:.1} MiB, max \
         {:.1} MiB",
        SAMPLE_EVERY.as_millis(),
        median(&rss),
        rss.iter().copied().fold(f64::NAN, f64::max)
    );
    if let Some(summary) = ours.last().and_then(|s| s.summary.as_deref()) {
        println!("   cdcconsumer's own summary (last run): {summary}");
    }
    print_counted(ours, "cdcconsumer warnings/errors logged per run");
    print_counted(
        bare,
        "bare loop writes retried per run (not acknowledged in time)",
    );
    let busy: Vec<String> = rate
        .samples
        .values()
        .flatten()
        .filter_map(|s| s.busy_before.map(|b| format!("{:.0}", b * 100.0)))
        .collect();
    println!(
        "   CPU busy % in the second before each run: {}; filling the topics took {:.2} s",
        busy.join(" "),
        rate.fill_seconds
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_plans_every_change_with_rising_lsn() {
        for adjacent in [false, true] {
            stream_plans(adjacent);
        }
    }

    fn stream_plans(adjacent: bool) {
        let stream = RateStream::build(3, 7, 1_000_000, adjacent).expect("stream");
        assert_eq!(stream.records.len(), 3 * 2 + 7 * 3);
        assert_eq!(stream.changes(), stream.records.len());
        // Side by side, the first user's update follows its creation; otherwise an order does.
        assert_eq!(stream.records[0].key == stream.records[1].key, adjacent);
        // Users: one write per change; orders: orders and orders_by_user.
        assert_eq!(stream.writes(), 3 * 2 + 7 * 3 * 2);
        assert_eq!(stream.planned.len(), stream.changes());
        let lsns: Vec<i64> = stream.planned.iter().map(|(_, lsn)| *lsn).collect();
        assert!(lsns.windows(2).all(|w| w[0] <= w[1]));
        let final_versions: i64 = stream
            .planned
            .iter()
            .flat_map(|(writes, _)| writes)
            .filter(|w| w.table().name == tables::ORDERS.name)
            .filter_map(|w| w.cell("version").cloned())
            .filter_map(|v| v.value())
            .filter(|v| *v == CqlValue::BigInt(3))
            .count()
            .try_into()
            .expect("count");
        assert_eq!(final_versions, 7);
    }
}
