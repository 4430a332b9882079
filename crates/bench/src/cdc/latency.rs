//! End-to-end latency at a fixed load on the real Debezium topics: commit → readable in Kafka,
//! commit → readable in Cassandra through cdcconsumer, and through a bare write on arrival.

use super::*;

// ---------------------------------------------------------------------------------------------
// End-to-end latency

/// A row at a version: what one committed change makes of it.
pub(super) type RowVersion = (&'static str, Uuid, i64);

/// When the changes the writer committed were seen, by the bench consumer and by the poller.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Rows the writer created (changes of other rows on the topics are ignored).
    ids: HashSet<Uuid>,
    kafka: HashMap<RowVersion, Instant>,
    cassandra: HashMap<RowVersion, Readable>,
    /// The same rows written by the bench itself the moment they arrive from Kafka (the baseline).
    bare: HashMap<RowVersion, Readable>,
    /// Leg (a) split by the envelope's own clocks, µs: source commit → Debezium's envelope time,
    /// and envelope time → arrival here.
    debezium: HashMap<RowVersion, (i64, i64)>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Readable {
    /// Completion of the first read that showed the change.
    at: Instant,
    /// The very first read already showed it.
    at_first_poll: bool,
}

/// The poller's session and statements.
#[derive(Debug)]
pub(super) struct Probe {
    session: Session,
    users: PreparedStatement,
    orders: PreparedStatement,
    interval: Duration,
    reads: AtomicU64,
}

impl Probe {
    async fn connect(
        nodes: &[String],
        keyspace: &str,
        consistency: Consistency,
        interval: Duration,
    ) -> Result<Self> {
        let session = cassandra::connect(nodes).await?;
        let prepare = |table: &str| {
            let text = format!("SELECT version FROM {keyspace}.{table} WHERE id = ?");
            let session = &session;
            async move {
                let mut statement = session.prepare(text).await?;
                statement.set_consistency(consistency);
                statement.set_request_timeout(Some(Duration::from_secs(5)));
                anyhow::Ok(statement)
            }
        };
        let users = retry_schema("preparing the users read", || prepare("users")).await?;
        let orders = retry_schema("preparing the orders read", || prepare("orders")).await?;
        Ok(Self {
            session,
            users,
            orders,
            interval,
            reads: AtomicU64::new(0),
        })
    }

    async fn version(&self, table: &str, id: Uuid) -> Result<Option<i64>> {
        let statement = if table == tables::USERS.name {
            &self.users
        } else {
            &self.orders
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let rows = self
            .session
            .execute_unpaged(statement, (id,))
            .await?
            .into_rows_result()?;
        Ok(rows.maybe_first_row::<(Option<i64>,)>()?.and_then(|(v,)| v))
    }
}

/// Which keyspace a poller watches.
#[derive(Debug, Clone, Copy)]
pub(super) enum Writer {
    /// cdcconsumer's.
    Ours,
    /// The bench's own writes on arrival.
    Bare,
}

/// Reads `row` every poll interval until Cassandra shows its version (or a later one).
pub(super) async fn poll_row(
    probe: Arc<Probe>,
    seen: Arc<Mutex<Seen>>,
    row: RowVersion,
    writer: Writer,
    cancel: CancellationToken,
) {
    let deadline = Instant::now() + ROW_DEADLINE;
    let mut first = true;
    loop {
        match probe.version(row.0, row.1).await {
            Ok(Some(version)) if version >= row.2 => {
                let readable = Readable {
                    at: Instant::now(),
                    at_first_poll: first,
                };
                let mut seen = lock(&seen);
                match writer {
                    Writer::Ours => seen.cassandra.insert(row, readable),
                    Writer::Bare => seen.bare.insert(row, readable),
                };
                return;
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "poll read failed"),
        }
        first = false;
        if Instant::now() >= deadline {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(probe.interval) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// The baseline: the bench's own session and statements (the same prepared CQL and consistency as
/// cdcconsumer's) on a keyspace of its own, and a poller on it.
#[derive(Debug)]
pub(super) struct Bare {
    session: Session,
    statements: Statements,
    probe: Arc<Probe>,
}

/// Runs a change's writes in one request (as cdcconsumer runs one change's writes), then polls
/// for the row like cdcconsumer's poller does; a refused write leaves the row missing.
pub(super) async fn bare_row(
    bare: Arc<Bare>,
    seen: Arc<Mutex<Seen>>,
    row: RowVersion,
    plan: Plan,
    cancel: CancellationToken,
) {
    let written = bare
        .statements
        .execute_all(&bare.session, &plan.writes, plan.lsn)
        .await;
    if let Err(error) = written {
        tracing::warn!(%error, "bare write failed");
        return;
    }
    poll_row(Arc::clone(&bare.probe), seen, row, Writer::Bare, cancel).await;
}

/// The version a planned change leaves its row at.
pub(super) fn planned_version(writes: &[Write]) -> Option<i64> {
    writes
        .iter()
        .find_map(|write| match (write.table().name, write.cell("version")) {
            (table, Some(Field::Value(CqlValue::BigInt(v))))
                if table != tables::ORDERS_BY_USER.name =>
            {
                Some(*v)
            }
            _ => None,
        })
}

/// The envelope's own timestamp (when Debezium made it), µs since the epoch.
pub(super) fn envelope_micros(payload: Option<&[u8]>) -> Option<i64> {
    let value: Value = serde_json::from_slice(payload?).ok()?;
    let payload = &value["payload"];
    payload["ts_us"]
        .as_i64()
        .or_else(|| payload["ts_ms"].as_i64().map(|ms| ms * 1000))
}

/// Reads Debezium's topics from `start` and notes when each of the writer's changes arrives; each
/// first arrival starts a poller.
pub(super) async fn watch_kafka(
    consumer: StreamConsumer,
    seen: Arc<Mutex<Seen>>,
    probe: Arc<Probe>,
    bare: Arc<Bare>,
    cancel: CancellationToken,
) -> Result<()> {
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message?,
            () = cancel.cancelled() => return Ok(()),
        };
        let arrived = Instant::now();
        let arrived_micros = Utc::now().timestamp_micros();
        let Ok(record) = debezium::parse(message.key(), message.payload()) else {
            continue;
        };
        let commit_micros = match &record {
            debezium::Record::Change(change) => change.source.commit_micros(),
            debezium::Record::Tombstone { .. } => continue,
        };
        let Ok(Planned::Writes(plan)) =
            plan::plan(&record, &Encoding::default(), &Registry::default())
        else {
            continue;
        };
        let Some(version) = planned_version(&plan.writes) else {
            continue;
        };
        let row = (plan.table.name, plan.key, version);
        let first = {
            let mut seen = lock(&seen);
            seen.ids.contains(&plan.key) && {
                let known = seen.kafka.contains_key(&row);
                seen.kafka.entry(row).or_insert(arrived);
                !known
            }
        };
        if first {
            if let Some(emitted) = envelope_micros(message.payload()) {
                lock(&seen)
                    .debezium
                    .insert(row, (emitted - commit_micros, arrived_micros - emitted));
            }
            tokio::spawn(bare_row(
                Arc::clone(&bare),
                Arc::clone(&seen),
                row,
                plan,
                cancel.clone(),
            ));
            tokio::spawn(poll_row(
                Arc::clone(&probe),
                Arc::clone(&seen),
                row,
                Writer::Ours,
                cancel.clone(),
            ));
        }
    }
}

/// Commits the high watermarks of `topics` as `group`'s offsets (so a consumer of that group starts
/// at the end), and returns them.
pub(crate) fn commit_end_offsets(
    config: &ClientConfig,
    group: &str,
    topics: &[(String, i32)],
) -> Result<TopicPartitionList> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut positions = TopicPartitionList::new();
    for (topic, partitions) in topics {
        for partition in 0..*partitions {
            let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
            positions.add_partition_offset(topic, partition, Offset::Offset(high))?;
        }
    }
    consumer.commit(&positions, CommitMode::Sync)?;
    let committed = consumer.committed_offsets(positions.clone(), Duration::from_secs(10))?;
    ensure!(
        committed.to_topic_map() == positions.to_topic_map(),
        "group {group} did not keep the committed offsets: {committed:?}"
    );
    Ok(positions)
}

/// Waits until `group` is Stable with a member (cdcconsumer has its partitions).
pub(super) fn wait_group_stable(
    config: &ClientConfig,
    group: &str,
    timeout: Duration,
) -> Result<()> {
    let consumer: BaseConsumer = config.create()?;
    let deadline = Instant::now() + timeout;
    loop {
        let list = consumer.fetch_group_list(Some(group), Duration::from_secs(5))?;
        let stable = list
            .groups()
            .iter()
            .any(|g| g.state() == "Stable" && !g.members().is_empty());
        if stable {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "consumer group {group} not Stable within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the writer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    InsertUser,
    UpdateUser,
    InsertOrder,
    UpdateOrder,
}

/// The writer's mix, repeated: per 10 changes 1 user created, 1 user updated, 4 orders created, 4
/// orders updated.
pub(super) const MIX: [Kind; 10] = [
    Kind::InsertUser,
    Kind::InsertOrder,
    Kind::UpdateOrder,
    Kind::InsertOrder,
    Kind::UpdateOrder,
    Kind::UpdateUser,
    Kind::InsertOrder,
    Kind::UpdateOrder,
    Kind::UpdateOrder,
    Kind::InsertOrder,
];

#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    InsertUser(Uuid),
    UpdateUser(Uuid),
    InsertOrder { id: Uuid, user_id: Uuid },
    UpdateOrder(Uuid),
}

/// Rows the writer has committed; a row being updated is out of the idle queue, so one row's
/// changes never overlap.
#[derive(Debug, Default)]
pub(super) struct Rows {
    users: Vec<Uuid>,
    idle_users: VecDeque<Uuid>,
    idle_orders: VecDeque<Uuid>,
    next_owner: usize,
}

impl Rows {
    pub(super) fn next(&mut self, wanted: Kind) -> Op {
        match wanted {
            Kind::UpdateUser => {
                if let Some(id) = self.idle_users.pop_front() {
                    return Op::UpdateUser(id);
                }
            }
            Kind::UpdateOrder => {
                if let Some(id) = self.idle_orders.pop_front() {
                    return Op::UpdateOrder(id);
                }
            }
            Kind::InsertUser | Kind::InsertOrder => {}
        }
        let wants_order = matches!(wanted, Kind::InsertOrder | Kind::UpdateOrder);
        if wants_order && !self.users.is_empty() {
            // Spread orders over the most recent users.
            let window = self.users.len().min(50);
            let owner = self.users[self.users.len() - 1 - self.next_owner % window];
            self.next_owner += 1;
            Op::InsertOrder {
                id: Uuid::new_v4(),
                user_id: owner,
            }
        } else {
            Op::InsertUser(Uuid::new_v4())
        }
    }

    pub(super) fn committed(&mut self, op: Op) {
        match op {
            Op::InsertUser(id) => {
                self.users.push(id);
                self.idle_users.push_back(id);
            }
            Op::UpdateUser(id) => self.idle_users.push_back(id),
            Op::InsertOrder { id, .. } | Op::UpdateOrder(id) => self.idle_orders.push_back(id),
        }
    }
}

/// Commits one change (autocommit: one statement, one transaction); returns the row and version.
pub(super) async fn commit(pool: &PgPool, op: Op, n: u64) -> Result<RowVersion> {
    let first = FIRST_NAMES[usize::try_from(n).unwrap_or(0) % FIRST_NAMES.len()];
    let last = LAST_NAMES[usize::try_from(n / 7).unwrap_or(0) % LAST_NAMES.len()];
    Ok(match op {
        Op::InsertUser(id) => {
            sqlx::query(
                "INSERT INTO users (id, name, email, created_at, updated_at, deleted_at, version) \
                 VALUES ($1, $2, $3, now(), now(), NULL, 1)",
            )
            .bind(id)
            .bind(format!("{first} {last}"))
            .bind(format!(
                "{}.{}.{id}@example.com",
                first.to_lowercase(),
                last.to_lowercase()
            ))
            .execute(pool)
            .await?;
            (tables::USERS.name, id, 1)
        }
        Op::UpdateUser(id) => {
            let (version,): (i64,) = sqlx::query_as(
                "UPDATE users SET name = $2, updated_at = now(), version = version + 1 \
                 WHERE id = $1 RETURNING version",
            )
            .bind(id)
            .bind(format!("{first} {last}"))
            .fetch_one(pool)
            .await?;
            (tables::USERS.name, id, version)
        }
        Op::InsertOrder { id, user_id } => {
            let cents = 199 + i64::try_from(n % 40_000).unwrap_or(0);
            sqlx::query(
                "INSERT INTO orders (id, user_id, product, quantity, amount, status, order_date, \
                 created_at, updated_at, deleted_at, version) \
                 VALUES ($1, $2, $3, $4, $5::bigint / 100.0, 'PLACED', current_date, now(), now(), \
                 NULL, 1)",
            )
            .bind(id)
            .bind(user_id)
            .bind(PRODUCTS[usize::try_from(n).unwrap_or(0) % PRODUCTS.len()])
            .bind(1 + i32::try_from(n % 4).unwrap_or(0))
            .bind(cents)
            .execute(pool)
            .await?;
            (tables::ORDERS.name, id, 1)
        }
        Op::UpdateOrder(id) => {
            let (version,): (i64,) = sqlx::query_as(
                "UPDATE orders SET status = CASE status WHEN 'PLACED' THEN 'SHIPPED' \
                 ELSE 'DELIVERED' END, updated_at = now(), version = version + 1 \
                 WHERE id = $1 RETURNING version",
            )
            .bind(id)
            .fetch_one(pool)
            .await?;
            (tables::ORDERS.name, id, version)
        }
    })
}

/// One change the writer committed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Commit {
    row: RowVersion,
    scheduled: Instant,
    sent: Instant,
    acked: Instant,
    /// Scheduled after the warm-up.
    measured: bool,
}

/// Commits `rate` changes per second on an open-loop schedule (each change sent at its slot,
/// whether or not earlier ones are done) for `warmup + duration`.
pub(super) async fn write_load(
    pool: PgPool,
    seen: Arc<Mutex<Seen>>,
    rate: u32,
    warmup: Duration,
    duration: Duration,
) -> Result<Vec<Commit>> {
    let rows = Arc::new(Mutex::new(Rows::default()));
    let slot = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = ((warmup + duration).as_secs_f64() * f64::from(rate)).round() as u64;
    let begin = Instant::now() + Duration::from_millis(50);
    let measured_from = begin + warmup;
    let mut tasks: JoinSet<Result<Commit>> = JoinSet::new();
    let mut commits = Vec::new();
    for n in 0..total {
        let scheduled = begin + slot.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        while let Some(done) = tasks.try_join_next() {
            commits.push(done??);
        }
        let op = lock(&rows).next(MIX[usize::try_from(n % 10)?]);
        if let Op::InsertUser(id) | Op::InsertOrder { id, .. } = op {
            lock(&seen).ids.insert(id);
        }
        let (pool, rows) = (pool.clone(), Arc::clone(&rows));
        tasks.spawn(async move {
            let sent = Instant::now();
            let row = commit(&pool, op, n).await?;
            let acked = Instant::now();
            lock(&rows).committed(op);
            Ok(Commit {
                row,
                scheduled,
                sent,
                acked,
                measured: scheduled >= measured_from,
            })
        });
    }
    while let Some(done) = tasks.join_next().await {
        commits.push(done??);
    }
    Ok(commits)
}

#[derive(Debug)]
pub(super) struct Latency {
    /// Commit → readable from Kafka, ms, sorted.
    kafka_ms: Vec<f64>,
    /// Commit → readable in Cassandra, ms, sorted.
    cassandra_ms: Vec<f64>,
    /// Per row: Cassandra − Kafka, ms, sorted.
    row_added_ms: Vec<f64>,
    /// Commit → readable in the baseline's keyspace, ms, sorted.
    bare_ms: Vec<f64>,
    /// Median of leg a over the first and the last 5 s of the window (a backlog shows as growth).
    kafka_drift_ms: (f64, f64),
    /// Source commit → Debezium's envelope time, ms, sorted.
    capture_ms: Vec<f64>,
    /// Debezium's envelope time → readable from Kafka, ms, sorted.
    delivery_ms: Vec<f64>,
    measured: usize,
    missing_kafka: usize,
    missing_cassandra: usize,
    missing_bare: usize,
    at_first_poll: usize,
    achieved_rate: f64,
    send_late_p99_ms: f64,
    commit_p50_ms: f64,
    commit_p99_ms: f64,
    reads_per_sec: f64,
    /// cdcconsumer's own end-to-end histogram: bucket bounds at p50/p95/p99 and its count.
    own_histogram: Option<(Vec<f64>, u64)>,
    peak_rss_kib: Option<u64>,
    summary: String,
    warnings: (usize, String),
    busy_before: Option<f64>,
}

pub(super) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `later − earlier` in ms, negative when `later` is before `earlier`.
pub(super) fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => millis(d),
        None => -millis(earlier.duration_since(later)),
    }
}

pub(super) async fn latency(
    ctx: &BenchContext,
    args: &CdcArgs,
    launcher: &Launcher<'_>,
    control: &Session,
    consistency: Consistency,
    cleanup: &mut Cleanup,
) -> Result<Latency> {
    let keyspace = unique_name("bench_cdc_latency_ks");
    cleanup.keyspaces.push(keyspace.clone());
    create_keyspace(control, &args.cassandra.cassandra_nodes, &keyspace).await?;
    let bare_keyspace = unique_name("bench_cdc_latency_bare_ks");
    cleanup.keyspaces.push(bare_keyspace.clone());
    create_keyspace(control, &args.cassandra.cassandra_nodes, &bare_keyspace).await?;
    let pool = PgPoolOptions::new()
        .max_connections(WRITER_CONNECTIONS)
        .min_connections(WRITER_CONNECTIONS)
        .connect(&ctx.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let topics = args.cdc.with_partitions(&ctx.brokers).await?;
    let busy_before = wait_until_quiet(args.quiet_wait()).await;

    // cdcconsumer's group starts at the topics' end.
    let group = unique_name("bench_cdc_latency_group");
    cleanup.groups.push(group.clone());
    let config = ctx.kafka.client_config();
    let (c, g, t) = (config.clone(), group.clone(), topics.clone());
    let start = tokio::task::spawn_blocking(move || commit_end_offsets(&c, &g, &t)).await??;
    let metrics_addr = free_metrics_addr()?;
    let command = launcher.command(&args.cdc.cdc_topics, &group, &keyspace, 0, &metrics_addr);
    let mut subject = Subject::spawn(command)?;
    let (c, g) = (config.clone(), group.clone());
    let stable =
        tokio::task::spawn_blocking(move || wait_group_stable(&c, &g, Duration::from_secs(60)))
            .await?;
    if let Err(error) = stable {
        let stderr = subject.kill().await;
        return Err(error.context(format!("cdcconsumer stderr:\n{stderr}")));
    }

    // The bench consumer reads from the same positions; nothing is committed.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let poll_every = Duration::from_millis(args.poll_interval_ms);
    let nodes = &args.cassandra.cassandra_nodes;
    let probe = Arc::new(Probe::connect(nodes, &keyspace, consistency, poll_every).await?);
    let bare_session = cassandra::connect(nodes).await?;
    let bare_statements = retry_schema("preparing the bare writes", || {
        Statements::prepare(&bare_session, &bare_keyspace, consistency)
    })
    .await?;
    let bare = Arc::new(Bare {
        session: bare_session,
        statements: bare_statements,
        probe: Arc::new(Probe::connect(nodes, &bare_keyspace, consistency, poll_every).await?),
    });
    let watcher_group = unique_name("bench_cdc_watch");
    cleanup.groups.push(watcher_group.clone());
    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", &watcher_group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    consumer.assign(&start)?;
    let cancel = CancellationToken::new();
    let mut watcher = AbortOnDrop(tokio::spawn(watch_kafka(
        consumer,
        Arc::clone(&seen),
        Arc::clone(&probe),
        Arc::clone(&bare),
        cancel.clone(),
    )));

    let warmup = Duration::from_secs(args.warmup_secs);
    let duration = Duration::from_secs(args.duration_secs);
    tracing::info!(
        rate = args.rate,
        warmup_secs = args.warmup_secs,
        duration_secs = args.duration_secs,
        "committing changes to PostgreSQL"
    );
    let written = write_load(pool.clone(), Arc::clone(&seen), args.rate, warmup, duration).await;
    let commits = match written {
        Ok(commits) => commits,
        Err(error) => {
            cancel.cancel();
            let stderr = subject.kill().await;
            return Err(error.context(format!("cdcconsumer stderr:\n{stderr}")));
        }
    };
    pool.close().await;
    let measured: Vec<Commit> = commits.iter().copied().filter(|c| c.measured).collect();
    // Reads during the load; the wait below polls only the stragglers.
    let reads_during_load =
        probe.reads.load(Ordering::Relaxed) + bare.probe.reads.load(Ordering::Relaxed);

    // Every measured change readable in Kafka and Cassandra, or the deadline.
    let deadline = Instant::now() + ROW_DEADLINE;
    loop {
        let missing = {
            let seen = lock(&seen);
            measured
                .iter()
                .filter(|c| !seen.cassandra.contains_key(&c.row) || !seen.bare.contains_key(&c.row))
                .count()
        };
        if missing == 0 || Instant::now() >= deadline {
            break;
        }
        if watcher.0.is_finished() {
            (&mut watcher.0).await??;
            bail!("the bench consumer stopped");
        }
        if subject.child.try_wait()?.is_some() {
            let stderr = subject.kill().await;
            bail!("cdcconsumer exited during the latency test:\n{stderr}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let own_histogram = scrape(&metrics_addr)
        .await
        .and_then(|text| histogram_quantiles(&text, &[0.5, 0.95, 0.99]));
    cancel.cancel();
    let pid = subject.child.id().context("cdcconsumer has no pid")?;
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    ensure!(status.success(), "could not signal cdcconsumer (pid {pid})");
    let finished = subject.finish(Duration::from_secs(30)).await?;
    ensure!(
        finished.status.success(),
        "cdcconsumer exited with {}:\n{}",
        finished.status,
        tail(&finished.stderr, 40)
    );

    let seen = lock(&seen);
    let mut kafka_ms = Vec::new();
    let mut cassandra_ms = Vec::new();
    let mut row_added_ms = Vec::new();
    let mut bare_ms = Vec::new();
    let mut at_first_poll = 0;
    let mut capture_ms = Vec::new();
    let mut delivery_ms = Vec::new();
    for c in &measured {
        if let Some((capture, delivery)) = seen.debezium.get(&c.row) {
            capture_ms.push(*capture as f64 / 1000.0);
            delivery_ms.push(*delivery as f64 / 1000.0);
        }
        let kafka = seen.kafka.get(&c.row);
        let cassandra = seen.cassandra.get(&c.row);
        if let Some(k) = kafka {
            kafka_ms.push(signed_ms(*k, c.acked));
        }
        if let Some(r) = cassandra {
            cassandra_ms.push(signed_ms(r.at, c.acked));
            at_first_poll += usize::from(r.at_first_poll);
        }
        if let (Some(k), Some(r)) = (kafka, cassandra) {
            row_added_ms.push(signed_ms(r.at, *k));
        }
        if let Some(r) = seen.bare.get(&c.row) {
            bare_ms.push(signed_ms(r.at, c.acked));
        }
    }
    let edge = Duration::from_secs(5);
    let kafka_median_between = |from: Instant, to: Instant| {
        let mut values: Vec<f64> = measured
            .iter()
            .filter(|c| c.scheduled >= from && c.scheduled < to)
            .filter_map(|c| seen.kafka.get(&c.row).map(|k| signed_ms(*k, c.acked)))
            .collect();
        values.sort_by(f64::total_cmp);
        percentile(&values, 0.5)
    };
    let kafka_drift_ms = match (
        measured.iter().map(|c| c.scheduled).min(),
        measured.iter().map(|c| c.scheduled).max(),
    ) {
        (Some(first), Some(last)) => (
            kafka_median_between(first, first + edge),
            kafka_median_between(last.checked_sub(edge).unwrap_or(first), last + edge),
        ),
        _ => (f64::NAN, f64::NAN),
    };
    for values in [
        &mut kafka_ms,
        &mut cassandra_ms,
        &mut row_added_ms,
        &mut bare_ms,
        &mut capture_ms,
        &mut delivery_ms,
    ] {
        values.sort_by(f64::total_cmp);
    }
    let mut late: Vec<f64> = measured
        .iter()
        .map(|c| signed_ms(c.sent, c.scheduled))
        .collect();
    late.sort_by(f64::total_cmp);
    let mut commit_ms: Vec<f64> = measured
        .iter()
        .map(|c| millis(c.acked.duration_since(c.sent)))
        .collect();
    commit_ms.sort_by(f64::total_cmp);
    let window = match (
        measured.iter().map(|c| c.sent).min(),
        measured.iter().map(|c| c.sent).max(),
    ) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let load_seconds = (warmup + duration).as_secs_f64();
    Ok(Latency {
        measured: measured.len(),
        missing_kafka: measured.len() - kafka_ms.len(),
        missing_cassandra: measured.len() - cassandra_ms.len(),
        missing_bare: measured.len() - bare_ms.len(),
        bare_ms,
        kafka_ms,
        cassandra_ms,
        row_added_ms,
        kafka_drift_ms,
        capture_ms,
        delivery_ms,
        at_first_poll,
        achieved_rate: if window > 0.0 {
            (measured.len().saturating_sub(1)) as f64 / window
        } else {
            f64::NAN
        },
        send_late_p99_ms: percentile(&late, 0.99),
        commit_p50_ms: percentile(&commit_ms, 0.5),
        commit_p99_ms: percentile(&commit_ms, 0.99),
        reads_per_sec: reads_during_load as f64 / load_seconds,
        own_histogram,
        peak_rss_kib: finished.peak_rss_kib,
        summary: summary_lines(&finished.stdout),
        warnings: warnings(&finished.stderr),
        busy_before,
    })
}

pub(super) fn report_latency(args: &CdcArgs, latency: &Latency) {
    let quantiles = [0.5, 0.95, 0.99];
    let row = |values: &[f64]| -> Vec<f64> {
        quantiles
            .iter()
            .map(|q| percentile(values, *q))
            .chain([values.last().copied().unwrap_or(f64::NAN)])
            .collect()
    };
    let kafka = row(&latency.kafka_ms);
    let cassandra = row(&latency.cassandra_ms);
    let added: Vec<f64> = cassandra.iter().zip(&kafka).map(|(b, a)| b - a).collect();
    let bare = row(&latency.bare_ms);
    let bare_added: Vec<f64> = bare.iter().zip(&kafka).map(|(c, a)| c - a).collect();
    let over_bare: Vec<f64> = cassandra.iter().zip(&bare).map(|(b, c)| b - c).collect();
    println!();
    println!(
        "2. end-to-end latency: {} changes/s offered to PostgreSQL (users and orders, 1:4 \
         rows, half inserts, half updates) for {} s after {} s of warm-up; {} changes measured \
         (achieved {:.0}/s; sends late by p99 {:.1} ms; commit p50 {:.1} ms, p99 {:.1} ms)",
        args.rate,
        args.duration_secs,
        args.warmup_secs,
        latency.measured,
        latency.achieved_rate,
        latency.send_late_p99_ms,
        latency.commit_p50_ms,
        latency.commit_p99_ms
    );
    println!(
        "   from the commit's return; (b) is the completion of the first {} read that showed the \
         change, polled every {} ms from its arrival in Kafka: late by at most {} ms + one read",
        consistency_name(args.cassandra.consistency).to_uppercase(),
        args.poll_interval_ms,
        args.poll_interval_ms
    );
    println!();
    println!(
        "{:<58} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "leg (ms)", "p50", "p95", "p99", "max", "rows"
    );
    let line = |label: &str, values: &[f64], rows: String| {
        println!(
            "{:<58} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8}",
            label, values[0], values[1], values[2], values[3], rows
        );
    };
    line(
        "(a) commit → readable from Kafka (Debezium)",
        &kafka,
        latency.kafka_ms.len().to_string(),
    );
    line(
        "  (a1) source commit → Debezium's envelope ts",
        &row(&latency.capture_ms),
        latency.capture_ms.len().to_string(),
    );
    line(
        "  (a2) Debezium's envelope ts → readable from Kafka",
        &row(&latency.delivery_ms),
        latency.delivery_ms.len().to_string(),
    );
    line(
        "(b) commit → readable in Cassandra",
        &cassandra,
        latency.cassandra_ms.len().to_string(),
    );
    line(
        "added by cdcconsumer: (b) − (a) per percentile",
        &added,
        String::new(),
    );
    line(
        "  per row: Cassandra − Kafka",
        &row(&latency.row_added_ms),
        latency.row_added_ms.len().to_string(),
    );
    line(
        "(c) baseline: commit → readable, bare write on arrival",
        &bare,
        latency.bare_ms.len().to_string(),
    );
    line(
        "added by the bare write: (c) − (a) per percentile",
        &bare_added,
        String::new(),
    );
    line(
        "cdcconsumer over the baseline: (b) − (c) per percentile",
        &over_bare,
        String::new(),
    );
    println!();
    println!(
        "   (a) median over the first 5 s of the window {:.1} ms, over the last 5 s {:.1} ms (growth \
         = the Debezium leg falls behind the offered load)",
        latency.kafka_drift_ms.0, latency.kafka_drift_ms.1
    );
    println!(
        "   (a1) and (a2) come from the envelope's clocks (PostgreSQL's commit time, Connect's \
         ts_us, this host's clock at arrival), not from the commit's return"
    );
    println!(
        "   added p99 {:.1} ms (target ≤ 50 ms), {:.1} ms over the baseline; missing after {} s: \
         {} in Kafka, {} in Cassandra, {} in the baseline; {} rows already readable at their \
         first poll; pollers {:.0} reads/s",
        added[2],
        over_bare[2],
        ROW_DEADLINE.as_secs(),
        latency.missing_kafka,
        latency.missing_cassandra,
        latency.missing_bare,
        latency.at_first_poll,
        latency.reads_per_sec
    );
    if let Some((bounds, count)) = &latency.own_histogram {
        let shown: Vec<String> = bounds
            .iter()
            .zip(quantiles)
            .map(|(b, q)| format!("p{:.0} ≤ {:.0} ms", q * 100.0, b * 1000.0))
            .collect();
        println!(
            "   cdcconsumer's own cdc_end_to_end_seconds (source commit → write, warm-up \
             included, {count} changes): {}",
            shown.join(", ")
        );
    }
    println!(
        "3. cdcconsumer peak RSS under this load: {} (VmHWM, sampled every {} ms; target < 64 MiB)",
        latency
            .peak_rss_kib
            .map_or("?".to_owned(), |k| format!("{:.1} MiB", mib(k))),
        SAMPLE_EVERY.as_millis()
    );
    println!("   cdcconsumer's own summary: {}", latency.summary);
    println!(
        "   cdcconsumer warnings/errors logged: {}{}",
        latency.warnings.0,
        if latency.warnings.0 > 0 {
            format!("; last: {}", latency.warnings.1)
        } else {
            String::new()
        }
    );
    if let Some(busy) = latency.busy_before {
        println!("   CPU busy % in the second before: {:.0}", busy * 100.0);
    }
    let chart = args.chart_dir.join(format!(
        "cdc-latency-{}.svg",
        Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let title = format!(
        "Commit → readable at {} changes/s ({} changes)",
        args.rate, latency.measured
    );
    let drawn = crate::charts::cdf(
        &chart,
        &title,
        &[
            ("(a) readable from Kafka (Debezium)", &latency.kafka_ms),
            (
                "(b) readable in Cassandra (cdcconsumer)",
                &latency.cassandra_ms,
            ),
            ("(c) baseline: bare write on arrival", &latency.bare_ms),
        ],
    );
    match drawn {
        Ok(()) => println!("   chart: {}", chart.display()),
        Err(error) => tracing::warn!(%error, chart = %chart.display(), "could not draw the chart"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_never_updates_a_row_twice_at_once() {
        let mut rows = Rows::default();
        assert!(matches!(rows.next(Kind::UpdateUser), Op::InsertUser(_)));
        assert!(matches!(rows.next(Kind::InsertOrder), Op::InsertUser(_)));
        let user = Uuid::new_v4();
        rows.committed(Op::InsertUser(user));
        assert!(matches!(rows.next(Kind::UpdateUser), Op::UpdateUser(id) if id == user));
        // Out of the idle queue until committed: the next update creates instead.
        assert!(matches!(rows.next(Kind::UpdateUser), Op::InsertUser(_)));
        assert!(
            matches!(rows.next(Kind::InsertOrder), Op::InsertOrder { user_id, .. } if user_id == user)
        );
    }
}
