//! The web console in a real browser against the real stack: Debian's chromium driven through
//! chromedriver (WebDriver), the console binary started by each test with its own names, every
//! expectation read back independently (Kafka, PostgreSQL, Connect's REST API). Screenshots go to
//! `<target>/console-screenshots/`.
//!
//! The tests run one at a time (a browser each on a 2-core machine, and page timings are checked);
//! the ones that stop a service hold the harness's exclusive lock and always bring it back.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cdc_core::topics::{ensure_topics, TopicSpec};
use fantoccini::{Client, ClientBuilder, Locator};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use stack_tests::kafka::{self, producer, send_raw};
use stack_tests::process::{self, free_address, http_get, http_request, Process};
use stack_tests::{
    exclusive, repo_root, shared, unique_name, wait_for, workspace_binary, RestartOnDrop, Stack,
};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

/// One console test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A page must render within this even when a backing service is down.
const RENDER_BUDGET: Duration = Duration::from_secs(2);

fn state_dir() -> PathBuf {
    std::env::var("CDC_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack"))
}

/// `<target>/console-screenshots`.
fn screenshot_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("the test binary is not in <target>/<profile>/deps")?;
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A console started by the test, with the stack's connection settings.
struct Console {
    process: Process,
    address: String,
}

impl Console {
    async fn start(stack: &Stack, args: &[&str]) -> Result<Self> {
        let binary = workspace_binary("console")?;
        let address = free_address()?;
        let connect_port = stack
            .topology
            .get("CONNECT_PORT")
            .context("CONNECT_PORT missing in topology.env")?;
        let mut command = process::command(stack, &binary);
        command
            .env("CONNECT_URL", format!("http://127.0.0.1:{connect_port}"))
            .env("LOG_LEVEL", "info,scylla=warn,rdkafka=warn")
            .arg("--listen")
            .arg(&address)
            .arg("--sample-interval")
            .arg("1s")
            .arg("--stack-dir")
            .arg(state_dir())
            .args(args);
        let process = Process::spawn("console", command)?;
        let console = Self { process, address };
        let probe = console.address.clone();
        wait_for("the console to serve", Duration::from_secs(30), || {
            let probe = probe.clone();
            async move { Ok(matches!(http_get(&probe, "/livez").await, Ok((200, _))).then_some(())) }
        })
        .await
        .with_context(|| console.process.log_tail(30))?;
        Ok(console)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

/// chromium under chromedriver, with a fresh profile.
struct Browser {
    client: Client,
    _driver: Process,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Result<Self> {
        let driver_address = free_address()?;
        let port = driver_address
            .rsplit(':')
            .next()
            .context("no port in the address")?
            .to_owned();
        let mut command = Command::new("chromedriver");
        command.arg(format!("--port={port}")).arg("--silent");
        let driver = Process::spawn("chromedriver", command)
            .context("starting chromedriver (apt-get install chromium chromium-driver)")?;
        // chromedriver keeps connections open, so readiness is its port accepting one.
        let probe = driver_address.clone();
        wait_for("chromedriver to listen", Duration::from_secs(30), || {
            let probe = probe.clone();
            async move {
                Ok(tokio::net::TcpStream::connect(&probe)
                    .await
                    .ok()
                    .map(|_| ()))
            }
        })
        .await?;
        let profile = std::env::temp_dir().join(unique_name("console-chromium"));
        std::fs::create_dir_all(&profile)?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--disable-quic", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{driver_address}"))
            .await
            .context("opening a chromium session")?;
        Ok(Self {
            client,
            _driver: driver,
            profile,
        })
    }

    /// Loads a page; returns how long it took to load.
    async fn open(&self, url: &str) -> Result<Duration> {
        let started = Instant::now();
        self.client
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))?;
        Ok(started.elapsed())
    }

    /// The attribute of the first element matching `css`, if there is one.
    async fn attr(&self, css: &str, name: &str) -> Result<Option<String>> {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => Ok(element.attr(name).await?),
            Err(error) if error.is_no_such_element() => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    async fn text(&self, css: &str) -> Result<Option<String>> {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => Ok(Some(element.text().await?)),
            Err(error) if error.is_no_such_element() => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let path = screenshot_dir()?.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        eprintln!("screenshot: {}", path.display());
        Ok(path)
    }

    async fn close(self) {
        if let Err(error) = self.client.close().await {
            eprintln!("closing the browser: {error}");
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Runs `scenario` with a browser, which is closed whatever the outcome.
async fn with_browser<F, Fut>(scenario: F) -> Result<()>
where
    F: FnOnce(Browser) -> Fut,
    Fut: std::future::Future<Output = (Browser, Result<()>)>,
{
    let browser = Browser::start().await?;
    let (browser, outcome) = scenario(browser).await;
    if outcome.is_err() {
        let name = std::thread::current()
            .name()
            .unwrap_or("console")
            .replace("::", "-");
        if let Err(error) = browser.screenshot(&format!("failed-{name}")).await {
            eprintln!("no screenshot of the failure: {error}");
        }
    }
    browser.close().await;
    outcome
}

// --- the overview after a run, and a dead letter's reason ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_every_service_and_the_pipelines_rates_and_a_dead_letters_reason(
) -> Result<()> {
    let _serial = serial().await;
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let users = unique_name("it_console_users");
    let orders = unique_name("it_console_orders");
    let users_group = unique_name("it_console_users_group");
    let orders_group = unique_name("it_console_orders_group");
    let rf = i32::try_from(stack.broker_count)?;
    ensure_topics(
        &stack.brokers,
        &[
            TopicSpec::new(&users, 3, rf),
            TopicSpec::new(&orders, 5, rf),
        ],
        Duration::from_secs(30),
    )
    .await?;
    let console = Console::start(
        &stack,
        &[
            "--source-topics",
            &format!("{users},{orders}"),
            "--pg-groups",
            &format!("{users_group}={users},{orders_group}={orders}"),
        ],
    )
    .await?;

    with_browser(|browser| async {
        let outcome = async {
            browser.open(&console.url("/")).await?;
            // Every service of the profile is up: brokers, PostgreSQL, Connect, Cassandra nodes.
            let expected = stack.broker_count + 2 + stack.cassandra_nodes.len();
            wait_for(
                "every service shown up",
                Duration::from_secs(30),
                || async {
                    browser.open(&console.url("/")).await?;
                    let services = browser
                        .client
                        .find_all(Locator::Css("[data-service]"))
                        .await?;
                    let mut up = 0;
                    for service in &services {
                        if service.attr("data-up").await?.as_deref() == Some("true") {
                            up += 1;
                        }
                    }
                    Ok((services.len() == expected && up == expected).then_some(()))
                },
            )
            .await?;

            // One record the consumer cannot decode, then a paced producer run (about ten seconds,
            // so the live overview sees it) with the consumer applying as the events arrive.
            let kafka_producer = producer(&stack)?;
            send_raw(
                &kafka_producer,
                &users,
                None,
                Some(b"bad-key"),
                Some(b"{not json"),
            )
            .await?;
            // The live overview (no reload) shows the produced and applied rates and the captured
            // changes Debezium makes of them.
            browser.open(&console.url("/")).await?;
            let producer_bin = workspace_binary("producer")?;
            let mut run = process::command(&stack, &producer_bin);
            run.env("USERS_TOPIC", &users)
                .env("ORDERS_TOPIC", &orders)
                .args(["--users", "200", "--orders", "600", "--rate", "200"]);
            let producing = Process::spawn("producer", run)?;
            let consumer_bin = workspace_binary("consumer")?;
            let mut consume = process::command(&stack, &consumer_bin);
            consume
                .env("USERS_TOPIC", &users)
                .env("ORDERS_TOPIC", &orders)
                .env("USERS_GROUP", &users_group)
                .env("ORDERS_GROUP", &orders_group)
                .env("IDLE_TIMEOUT_SECS", "4");
            let consumer = Process::spawn("consumer", consume)?;

            // Each hop's highest rate seen so far: the hops run one after the other.
            let seen = std::cell::Cell::new([0.0_f64; 3]);
            let read_rates = "return ['produced', 'pg_applied', 'captured'].map(h => \
                { const e = document.querySelector('[data-hop=' + h + ']'); \
                  return e ? parseFloat(e.getAttribute('data-rate')) || 0 : 0; });";
            let waited = wait_for(
                "every hop's rate above 0",
                Duration::from_secs(60),
                || async {
                    let rates: Vec<f64> = serde_json::from_value(
                        browser.client.execute(read_rates, Vec::new()).await?,
                    )?;
                    let mut best = seen.get();
                    for (b, r) in best.iter_mut().zip(rates) {
                        *b = b.max(r);
                    }
                    seen.set(best);
                    Ok(best.iter().all(|r| *r > 0.0).then_some(()))
                },
            )
            .await;
            if let Err(error) = waited {
                let (_, overview) = http_get(&console.address, "/api/overview").await?;
                bail!(
                    "{error:#}; highest rates seen {:?}; the overview says {overview}",
                    seen.get()
                );
            }
            let rates = seen.get();
            eprintln!(
                "highest rates seen: produced {:.1}, applied {:.1}, captured {:.1} events/s",
                rates[0], rates[1], rates[2]
            );
            browser.screenshot("overview").await?;
            producing.run_to_end(Duration::from_secs(120)).await?;
            consumer.run_to_end(Duration::from_secs(180)).await?;
            // Charts have points once there are two looks with data.
            let lines = browser
                .client
                .find_all(Locator::Css("#live svg.spark polyline"))
                .await?;
            ensure!(!lines.is_empty(), "no chart line drawn");

            // The dead letter is counted on the overview, and its reason is shown first.
            let dlq = cdc_core::dlq::topic_for(&users);
            let letters = kafka::dead_letters(&stack, &dlq)?;
            ensure!(
                letters.len() == 1,
                "expected one dead letter, found {}",
                letters.len()
            );
            wait_for(
                "the dead letter counted",
                Duration::from_secs(15),
                || async {
                    let count = browser
                        .attr(&format!("[data-dlq='{dlq}']"), "data-count")
                        .await?;
                    Ok((count.as_deref() == Some("1")).then_some(()))
                },
            )
            .await?;
            browser.screenshot("overview-dead-letter").await?;
            browser
                .open(&console.url(&format!("/topics/{dlq}/messages")))
                .await?;
            let reason = browser.attr(".dlq-reason", "data-reason").await?;
            ensure!(
                reason.as_deref() == Some(letters[0].reason.as_str()),
                "the page shows reason {reason:?}, the dead letter says {:?}",
                letters[0].reason
            );
            let first_header = browser.text(".dlq-headers tr td").await?;
            ensure!(
                first_header.as_deref() == Some(cdc_core::dlq::HEADER_REASON),
                "dlq headers not shown first: {first_header:?}"
            );
            browser.screenshot("dead-letter").await?;
            Ok(())
        }
        .await;
        (browser, outcome)
    })
    .await
    .with_context(|| console.process.log_tail(40))?;

    kafka::delete_groups(&stack, &[users_group.as_str(), orders_group.as_str()]).await;
    kafka::delete_topics(&stack, &[users.as_str(), orders.as_str()]).await;
    Ok(())
}

// --- the message browser -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_found_by_its_key_with_its_json() -> Result<()> {
    let _serial = serial().await;
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let topic = unique_name("it_console_browse");
    let rf = i32::try_from(stack.broker_count)?;
    ensure_topics(
        &stack.brokers,
        &[TopicSpec::new(&topic, 3, rf)],
        Duration::from_secs(30),
    )
    .await?;
    let kafka_producer = producer(&stack)?;
    for n in 0..50 {
        let key = format!("other-{n}");
        send_raw(
            &kafka_producer,
            &topic,
            None,
            Some(key.as_bytes()),
            Some(format!(r#"{{"n":{n}}}"#).as_bytes()),
        )
        .await?;
    }
    let marker = Uuid::new_v4();
    let key = format!("console-key-{marker}");
    let value = serde_json::json!({"marker": marker.to_string(), "kind": "needle", "n": 42});
    send_raw(
        &kafka_producer,
        &topic,
        None,
        Some(key.as_bytes()),
        Some(value.to_string().as_bytes()),
    )
    .await?;
    let console = Console::start(&stack, &[]).await?;

    with_browser(|browser| async {
        let outcome = async {
            browser
                .open(&console.url(&format!("/topics/{topic}/messages")))
                .await?;
            let input = browser.client.find(Locator::Css("input#key")).await?;
            input.send_keys(&key).await?;
            browser
                .client
                .find(Locator::Css("form#browse button[type=submit]"))
                .await?
                .click()
                .await?;
            let found = wait_for(
                "the record in the browser",
                Duration::from_secs(15),
                || async {
                    // The page before the submit shows the newest records unfiltered: only a
                    // count rendered for this key's filter is the answer.
                    if browser.attr("#found", "data-key-filter").await?.as_deref()
                        != Some(key.as_str())
                    {
                        return Ok(None);
                    }
                    Ok(browser
                        .attr("#found", "data-count")
                        .await?
                        .filter(|c| c != "0"))
                },
            )
            .await?;
            ensure!(found == "1", "the key filter found {found} records");
            let shown_key = browser.attr(".msg", "data-key").await?;
            ensure!(
                shown_key.as_deref() == Some(key.as_str()),
                "shown key {shown_key:?}"
            );
            let json = browser.text(".msg pre.json").await?.unwrap_or_default();
            ensure!(
                json.contains(&format!("\"marker\": \"{marker}\"")) && json.contains("\"n\": 42"),
                "the value is not shown as pretty JSON:\n{json}"
            );
            browser.screenshot("message-by-key").await?;
            Ok(())
        }
        .await;
        (browser, outcome)
    })
    .await
    .with_context(|| console.process.log_tail(40))?;
    kafka::delete_topics(&stack, &[topic.as_str()]).await;
    Ok(())
}

// --- consumer-group lag --------------------------------------------------------------------------

/// Consumes up to `limit` records of `topic` as `group`, commits, and leaves the group.
fn consume_and_commit(stack: &Stack, group: &str, topic: &str, limit: usize) -> Result<usize> {
    let consumer: BaseConsumer = kafka::config(stack)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut consumed = 0;
    while consumed < limit && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                consumed += 1;
                consumer.store_offset_from_message(&message)?;
            }
            Some(Err(error)) => bail!("consuming {topic}: {error}"),
            None if limit == usize::MAX && consumed > 0 => break,
            None => {}
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync)?;
    consumer.unsubscribe();
    Ok(consumed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_consumers_lag_shows_and_returns_to_zero_once_it_catches_up() -> Result<()> {
    let _serial = serial().await;
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let topic = unique_name("it_console_lag");
    let group = unique_name("it_console_lag_group");
    let rf = i32::try_from(stack.broker_count)?;
    ensure_topics(
        &stack.brokers,
        &[TopicSpec::new(&topic, 1, rf)],
        Duration::from_secs(30),
    )
    .await?;
    let kafka_producer = producer(&stack)?;
    for n in 0..40 {
        send_raw(
            &kafka_producer,
            &topic,
            None,
            Some(format!("k{n}").as_bytes()),
            Some(b"{}"),
        )
        .await?;
    }
    let (s, g, t) = (stack.clone(), group.clone(), topic.clone());
    let first = tokio::task::spawn_blocking(move || consume_and_commit(&s, &g, &t, 15)).await??;
    ensure!(first == 15, "consumed {first} records, wanted 15");
    let console = Console::start(&stack, &[]).await?;

    with_browser(|browser| async {
        let outcome = async {
            // The consumer is stopped with 25 records left.
            browser
                .open(&console.url(&format!("/groups/{group}")))
                .await?;
            let lag = browser.attr("#total-lag", "data-lag").await?;
            ensure!(
                lag.as_deref() == Some("25"),
                "lag shown {lag:?}, expected 25"
            );
            let row = browser
                .attr(
                    &format!("tr[data-topic='{topic}'][data-partition='0']"),
                    "data-lag",
                )
                .await?;
            ensure!(row.as_deref() == Some("25"), "partition lag shown {row:?}");
            browser.screenshot("group-lag").await?;
            browser.open(&console.url("/groups")).await?;
            let listed = browser
                .attr(&format!("tr[data-group='{group}']"), "data-lag")
                .await?;
            ensure!(
                listed.as_deref() == Some("25"),
                "groups page shows lag {listed:?}"
            );

            // It catches up.
            let (s, g, t) = (stack.clone(), group.clone(), topic.clone());
            let rest =
                tokio::task::spawn_blocking(move || consume_and_commit(&s, &g, &t, usize::MAX))
                    .await??;
            ensure!(
                rest == 25,
                "the second run consumed {rest} records, wanted 25"
            );
            wait_for("the lag back to 0", Duration::from_secs(15), || async {
                browser
                    .open(&console.url(&format!("/groups/{group}")))
                    .await?;
                Ok(
                    (browser.attr("#total-lag", "data-lag").await?.as_deref() == Some("0"))
                        .then_some(()),
                )
            })
            .await?;
            browser.screenshot("group-caught-up").await?;
            Ok(())
        }
        .await;
        (browser, outcome)
    })
    .await
    .with_context(|| console.process.log_tail(40))?;
    kafka::delete_groups(&stack, &[group.as_str()]).await;
    kafka::delete_topics(&stack, &[topic.as_str()]).await;
    Ok(())
}

// --- Cassandra node down and up ------------------------------------------------------------------

/// `data-up` of a node's row on the Cassandra page, freshly loaded.
async fn node_state(browser: &Browser, url: &str, node: &str) -> Result<Option<String>> {
    browser.open(url).await?;
    browser
        .attr(&format!("tr[data-node='{node}']"), "data-up")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_cassandra_node_shows_down_within_15_s_and_up_once_started() -> Result<()> {
    let _serial = serial().await;
    let stack = Stack::from_env()?;
    if !stack.is_ha() {
        eprintln!("skipped: the lite profile has one Cassandra node");
        return Ok(());
    }
    let _exclusive = exclusive().await;
    let console = Console::start(&stack, &[]).await?;
    let node = stack
        .cassandra_nodes
        .last()
        .and_then(|n| n.rsplit_once(':'))
        .map(|(host, _)| host.to_owned())
        .context("no Cassandra node")?;
    let service = format!("cassandra{}", stack.cassandra_nodes.len());
    let cassandra_url = console.url("/cassandra");
    with_browser(|browser| async {
        let outcome = async {
            ensure!(
                node_state(&browser, &cassandra_url, &node)
                    .await?
                    .as_deref()
                    == Some("true"),
                "{node} not up at the start"
            );
            let mut restart = RestartOnDrop::new();
            restart.take_down("stop", &service)?;
            let stopped = Instant::now();
            wait_for(
                &format!("{node} shown down"),
                Duration::from_secs(15),
                || async {
                    Ok((node_state(&browser, &cassandra_url, &node)
                        .await?
                        .as_deref()
                        == Some("false"))
                    .then_some(()))
                },
            )
            .await?;
            eprintln!(
                "{node} shown down {:.1} s after it stopped",
                stopped.elapsed().as_secs_f64()
            );
            browser.screenshot("cassandra-node-down").await?;
            browser.open(&console.url("/")).await?;
            wait_for(
                "the overview to show the node down",
                Duration::from_secs(10),
                || async {
                    browser.open(&console.url("/")).await?;
                    let up = browser
                        .attr(&format!("[data-service='{service}']"), "data-up")
                        .await?;
                    Ok((up.as_deref() == Some("false")).then_some(()))
                },
            )
            .await?;
            restart.bring_back(&service)?;
            wait_for(
                &format!("{node} shown up"),
                Duration::from_secs(30),
                || async {
                    Ok((node_state(&browser, &cassandra_url, &node)
                        .await?
                        .as_deref()
                        == Some("true"))
                    .then_some(()))
                },
            )
            .await?;
            browser.screenshot("cassandra-node-up").await?;
            Ok(())
        }
        .await;
        (browser, outcome)
    })
    .await
    .with_context(|| console.process.log_tail(40))
}

// --- a Debezium update ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debezium_update_shows_its_before_and_after() -> Result<()> {
    let _serial = serial().await;
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&stack.database_url)
        .await?;
    let id = Uuid::new_v4();
    let name = unique_name("console_user");
    let topic = "cdc.public.users";
    let from = kafka::end_offsets(&stack, topic)?;
    let mut tx = pool.begin().await?;
    stack_tests::sql::insert_user(&mut tx, id, &name).await?;
    tx.commit().await?;
    sqlx::query(
        "UPDATE users SET name = $2, version = version + 1, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(format!("{name}-renamed"))
    .execute(&pool)
    .await?;
    kafka::wait_captured(&stack, topic, &from, &[(id, "c"), (id, "u")]).await?;
    let console = Console::start(&stack, &[]).await?;

    let outcome = with_browser(|browser| async {
        let outcome = async {
            browser
                .open(&console.url(&format!("/topics/{topic}/messages?key={id}&limit=5")))
                .await?;
            let op = browser.attr(".change[data-op=update]", "data-op").await?;
            ensure!(op.as_deref() == Some("update"), "no update shown for {id}");
            let changed = browser
                .client
                .find(Locator::Css(".change[data-op=update] tr[data-column=name]"))
                .await?;
            ensure!(
                changed.attr("data-changed").await?.as_deref() == Some("true"),
                "name not marked as changed"
            );
            let before = changed.find(Locator::Css(".before")).await?.text().await?;
            let after = changed.find(Locator::Css(".after")).await?.text().await?;
            ensure!(
                before == name && after == format!("{name}-renamed"),
                "before {before:?}, after {after:?}"
            );
            let unchanged = browser
                .attr(
                    ".change[data-op=update] tr[data-column=email]",
                    "data-changed",
                )
                .await?;
            ensure!(
                unchanged.as_deref() == Some("false"),
                "email marked changed: {unchanged:?}"
            );
            let lsn = browser
                .text(".change[data-op=update] .lsn")
                .await?
                .unwrap_or_default();
            ensure!(lsn.contains('/'), "no source LSN shown: {lsn:?}");
            browser.screenshot("debezium-update").await?;
            Ok(())
        }
        .await;
        (browser, outcome)
    })
    .await
    .with_context(|| console.process.log_tail(40));
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await?;
    outcome
}

// --- the restart action --------------------------------------------------------------------------

/// A raw POST: (status, body).
async fn http_post(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    http_request(address, "POST", path, headers, body).await
}

async fn connector_running(stack: &Stack, connector: &str) -> Result<bool> {
    let port = stack.topology.get("CONNECT_PORT").context("CONNECT_PORT")?;
    let (status, body) = http_get(
        &format!("127.0.0.1:{port}"),
        &format!("/connectors/{connector}/status"),
    )
    .await?;
    Ok(status == 200 && body.matches("\"state\":\"RUNNING\"").count() >= 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_restart_works_with_actions_enabled_and_is_refused_otherwise() -> Result<()> {
    let _serial = serial().await;
    let stack = Stack::from_env()?;
    let _exclusive = exclusive().await;
    let connector = stack
        .topology
        .get("CONNECTOR_NAME")
        .context("CONNECTOR_NAME missing in topology.env")?
        .clone();
    wait_for(
        "the connector running before the test",
        Duration::from_secs(120),
        || async { Ok(connector_running(&stack, &connector).await?.then_some(())) },
    )
    .await?;
    let read_only = Console::start(&stack, &[]).await?;
    let with_actions = Console::start(&stack, &["--enable-actions"]).await?;

    let outcome = with_browser(|browser| async {
        let outcome = async {
            // Without --enable-actions: no button, and a request is refused.
            browser.open(&read_only.url("/connect")).await?;
            ensure!(browser.text("#actions-off").await?.is_some(), "no note that actions are off");
            ensure!(
                browser.text(&format!("#restart-{connector}")).await?.is_none(),
                "a restart button is shown with actions off"
            );
            let status = browser
                .client
                .execute(
                    "return fetch(arguments[0], {method: 'POST', headers: {'X-Console-Action': 'restart'}}).then(r => r.status)",
                    vec![serde_json::json!(format!("/api/connect/{connector}/restart"))],
                )
                .await?;
            ensure!(status == serde_json::json!(403), "a restart without actions answered {status}");

            // With them: the button restarts the connector, which runs again.
            let button = wait_for("the restart button", Duration::from_secs(15), || async {
                browser.open(&with_actions.url("/connect")).await?;
                match browser.client.find(Locator::Css(&format!("#restart-{connector}"))).await {
                    Ok(button) => Ok(Some(button)),
                    Err(error) if error.is_no_such_element() => Ok(None),
                    Err(error) => Err(error.into()),
                }
            })
            .await?;
            button.click().await?;
            let banner = wait_for("the restart confirmed", Duration::from_secs(10), || async {
                browser.text("#restarted").await
            })
            .await?;
            ensure!(banner.contains(&connector), "banner {banner:?}");
            browser.screenshot("connector-restarted").await?;
            wait_for("the connector running again", Duration::from_secs(60), || async {
                Ok(connector_running(&stack, &connector).await?.then_some(()))
            })
            .await?;

            // A cross-site request and one without token or header are refused even then.
            let path = format!("/connect/{connector}/restart");
            let (status, _) = http_post(
                &with_actions.address,
                &path,
                &[("Origin", "http://attacker.example"), ("Content-Type", "application/x-www-form-urlencoded")],
                "token=guess",
            )
            .await?;
            ensure!(status == 403, "a cross-site restart answered {status}");
            let (status, _) = http_post(&with_actions.address, &path, &[("Content-Type", "application/x-www-form-urlencoded")], "token=guess").await?;
            ensure!(status == 403, "a restart with a wrong token answered {status}");
            Ok(())
        }
        .await;
        (browser, outcome)
    })
    .await;
    // Whatever happened, the connector must be running when the test ends.
    wait_for("the connector running", Duration::from_secs(90), || async {
        Ok(connector_running(&stack, &connector).await?.then_some(()))
    })
    .await?;
    outcome.with_context(|| {
        format!(
            "{}\n{}",
            read_only.process.log_tail(20),
            with_actions.process.log_tail(20)
        )
    })
}

// --- Kafka Connect down --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_connect_stopped_the_overview_renders_within_2_s_and_names_it() -> Result<()> {
    let _serial = serial().await;
    let stack = Stack::from_env()?;
    let _exclusive = exclusive().await;
    let console = Console::start(&stack, &[]).await?;

    with_browser(|browser| async {
        let outcome = async {
            let mut restart = RestartOnDrop::new();
            restart.take_down("stop", "connect")?;
            let slowest = std::cell::Cell::new(Duration::ZERO);
            wait_for(
                "Connect named unreachable",
                Duration::from_secs(20),
                || async {
                    let took = browser.open(&console.url("/")).await?;
                    slowest.set(slowest.get().max(took));
                    ensure!(took < RENDER_BUDGET, "the overview took {took:?}");
                    browser.text("[data-unreachable='Kafka Connect']").await
                },
            )
            .await?;
            let up = browser.attr("[data-service=connect]", "data-up").await?;
            ensure!(up.as_deref() == Some("false"), "connect shown up: {up:?}");
            browser.screenshot("connect-down").await?;
            let took = browser.open(&console.url("/connect")).await?;
            ensure!(took < RENDER_BUDGET, "the Connect page took {took:?}");
            let error = browser.text("[data-error]").await?.unwrap_or_default();
            ensure!(
                error.contains("Kafka Connect unreachable"),
                "Connect page says {error:?}"
            );
            eprintln!(
                "slowest overview with Connect down: {:?}; Connect page: {took:?}",
                slowest.get()
            );
            restart.bring_back("connect")?;
            Ok(())
        }
        .await;
        (browser, outcome)
    })
    .await
    .with_context(|| console.process.log_tail(40))
}

// --- What a look costs the brokers -----------------------------------------------------------------

/// Once warm, a look asks Kafka for the pipeline topics' metadata, their latest offsets (one
/// request per leader) and the groups' committed offsets (one request per coordinator) — and
/// nothing else: earliest offsets and coordinators are remembered between looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_look_asks_kafka_only_for_metadata_latest_and_committed_offsets() -> Result<()> {
    let _serial = serial().await;
    let _shared = shared().await;
    let stack = Stack::from_env()?;
    let console = Console::start(&stack, &[]).await?;
    let mut looks: std::collections::BTreeMap<String, (u64, usize)> = Default::default();
    let started = Instant::now();
    while looks.len() < 8 && started.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, body) = http_get(&console.address, "/api/overview").await?;
        ensure!(status == 200, "/api/overview answered {status}: {body}");
        let overview: serde_json::Value = serde_json::from_str(&body)?;
        let Some(snapshot) = overview.get("snapshot").filter(|s| !s.is_null()) else {
            continue;
        };
        let at = snapshot["at"].as_str().unwrap_or_default().to_owned();
        let requests = snapshot["kafka_requests"]
            .as_u64()
            .with_context(|| format!("no kafka_requests in {snapshot}"))?;
        let groups = snapshot["groups"].as_array().map_or(0, Vec::len);
        looks.entry(at).or_insert((requests, groups));
    }
    // The first looks find coordinators and earliest offsets; later ones must not ask again.
    let warm: Vec<(u64, usize)> = looks.values().skip(2).copied().collect();
    ensure!(
        warm.len() >= 4,
        "too few looks seen: {looks:?}\n{}",
        console.process.log_tail(30)
    );
    let groups = warm.iter().map(|(_, g)| *g).max().unwrap_or(0);
    let bound = 1 + stack.broker_count + groups;
    let mut counts: Vec<u64> = warm.iter().map(|(r, _)| *r).collect();
    counts.sort_unstable();
    let median = counts[counts.len() / 2];
    eprintln!("Kafka requests per look: {counts:?} (bound {bound})");
    ensure!(
        usize::try_from(median)? <= bound,
        "a warm look sent {median} requests (looks {counts:?}); at most {bound} expected: \
         metadata, latest offsets from {} leaders, committed offsets from {groups} coordinators",
        stack.broker_count
    );
    Ok(())
}
