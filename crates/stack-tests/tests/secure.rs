//! The secure profile (`CDC_PROFILE=secure bash stack/stack.sh up`, stack/secure.sh): every
//! service refuses plaintext, and a binary given a wrong password or a CA that did not sign the
//! server's certificate stops with one clear error naming the service, well within 30 s, instead
//! of retrying. The pipeline itself runs end to end on this profile (`stack.sh pipeline`, which CI
//! runs after these tests).
//!
//! On another profile there is nothing to refuse: each test says so and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use stack_tests::{unique_name, workspace_binary, Stack};

/// The longest a refused binary may take to stop.
const LIMIT: Duration = Duration::from_secs(30);

/// The secure stack's secrets and certificates, and a scratch folder for wrong ones.
struct Secure {
    stack: Stack,
    secrets: PathBuf,
    ca: PathBuf,
    scratch: PathBuf,
}

fn secure() -> Result<Option<Secure>> {
    let stack = Stack::from_env()?;
    if stack.profile != "secure" {
        eprintln!(
            "profile {}: nothing to check (run on CDC_PROFILE=secure)",
            stack.profile
        );
        return Ok(None);
    }
    let state = std::env::var("CDC_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| stack_tests::repo_root().join(".stack"));
    let scratch = std::env::temp_dir().join(unique_name("secure"));
    std::fs::create_dir_all(&scratch)?;
    Ok(Some(Secure {
        stack,
        secrets: state.join("secrets"),
        ca: state.join("tls/ca.crt"),
        scratch,
    }))
}

impl Secure {
    fn secret(&self, name: &str) -> Result<String> {
        let path = self.secrets.join(name);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }

    /// A file in the scratch folder.
    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.scratch.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// A CA of its own, which signed nothing the stack serves.
    fn other_ca(&self) -> Result<PathBuf> {
        let (key, cert) = (
            self.scratch.join("other.key"),
            self.scratch.join("other.crt"),
        );
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=another CA", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .context("running openssl")?;
        ensure!(status.success(), "openssl could not make a CA");
        Ok(cert)
    }

    /// `binary` with the identity stack.sh gives it on this profile (its Kafka user, the
    /// application's PostgreSQL URL, its Cassandra role, the stack's CA).
    fn command(&self, binary: &str, args: &[&str]) -> Result<Command> {
        let role = if binary == "console" {
            "console"
        } else {
            "cdcconsumer"
        };
        let mut command = Command::new(workspace_binary(binary)?);
        command
            .args(args)
            .env("KAFKA_BROKERS", &self.stack.brokers)
            .env("CASSANDRA_NODES", self.stack.cassandra_nodes.join(","))
            .env("REPLICATION_FACTOR", "1")
            .env("METRICS_ADDR", "")
            .env("RUST_BACKTRACE", "0")
            .env("LOG_LEVEL", "warn")
            .env(
                "KAFKA_CONFIG",
                self.secrets.join(format!("kafka-{binary}.properties")),
            )
            .env("DATABASE_URL_FILE", self.secrets.join("database.url"))
            .env("CASSANDRA_USERNAME", role)
            .env(
                "CASSANDRA_PASSWORD_FILE",
                self.secrets.join(format!("cassandra-{role}.password")),
            )
            .env("CASSANDRA_CA", &self.ca)
            .env("APPLY_SCHEMA", "false")
            .env_remove("DATABASE_URL")
            .env_remove("KAFKA_OPTIONS")
            .stdin(Stdio::null());
        Ok(command)
    }

    /// The application's PostgreSQL URL with another password, sslmode or root certificate.
    fn database_url(&self, password: &str, ssl: &str) -> Result<PathBuf> {
        let url = format!(
            "postgres://{}:{password}@127.0.0.1:{}/{}?{ssl}",
            self.stack.topology["POSTGRES_APP_USER"],
            self.stack.topology["POSTGRES_PORT"],
            self.stack.topology["POSTGRES_DB"],
        );
        self.write(&unique_name("database-url"), &url)
    }

    /// A copy of `client`'s librdkafka properties with `key` set to `value`.
    fn kafka_config(&self, client: &str, key: &str, value: &str) -> Result<PathBuf> {
        let original = self.secret(&format!("kafka-{client}.properties"))?;
        let mut lines: Vec<String> = original
            .lines()
            .filter(|line| !line.starts_with(&format!("{key}=")))
            .map(str::to_owned)
            .collect();
        lines.push(format!("{key}={value}"));
        self.write(&unique_name("kafka"), &lines.join("\n"))
    }
}

impl Drop for Secure {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Runs `command`, which must fail within [`LIMIT`] with one clear error: its stderr names
/// `service` and says `why`, and nothing was retried.
fn refused(what: &str, mut command: Command, service: &str, why: &str) -> Result<()> {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: starting"))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > LIMIT + Duration::from_secs(30) {
            let _ = child.kill();
            bail!("{what}: still running after {:?}", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    ensure!(!status.success(), "{what}: exited successfully:\n{stderr}");
    ensure!(elapsed < LIMIT, "{what}: took {elapsed:?}:\n{stderr}");
    let error = stderr
        .split_once("Error: ")
        .map(|(_, error)| error)
        .with_context(|| format!("{what}: no error printed:\n{stderr}"))?;
    ensure!(
        error.contains(service) && error.contains(why),
        "{what}: the error does not name {service} or say {why:?}:\n{stderr}"
    );
    ensure!(
        !stderr.contains("retrying"),
        "{what}: retried what cannot pass:\n{stderr}"
    );
    eprintln!("{what}: refused in {elapsed:?}");
    Ok(())
}

fn producer(secure: &Secure) -> Result<Command> {
    secure.command("producer", &["--users", "1", "--orders", "1"])
}

fn consumer(secure: &Secure) -> Result<Command> {
    secure.command("consumer", &["--idle-timeout-secs", "5"])
}

fn cdcconsumer(secure: &Secure) -> Result<Command> {
    secure.command("cdcconsumer", &["--idle-timeout-secs", "5"])
}

#[test]
fn every_service_refuses_plaintext() -> Result<()> {
    let Some(secure) = secure()? else {
        return Ok(());
    };
    let mut kafka = producer(&secure)?;
    kafka.env_remove("KAFKA_CONFIG");
    refused(
        "producer over plaintext",
        kafka,
        "Kafka refused the connection",
        "closed at the first request",
    )?;

    let url = secure.database_url(&secure.secret("postgres-app.password")?, "sslmode=disable")?;
    let mut postgres = consumer(&secure)?;
    postgres.env("DATABASE_URL_FILE", url);
    refused(
        "consumer over plaintext",
        postgres,
        "PostgreSQL",
        "no encryption",
    )?;

    let mut cassandra = cdcconsumer(&secure)?;
    cassandra.env_remove("CASSANDRA_CA");
    refused(
        "cdcconsumer over plaintext",
        cassandra,
        "Cassandra",
        "Connection reset by peer",
    )
}

#[test]
fn a_wrong_password_stops_a_binary_with_one_clear_error() -> Result<()> {
    let Some(secure) = secure()? else {
        return Ok(());
    };
    let mut kafka = producer(&secure)?;
    kafka.env(
        "KAFKA_CONFIG",
        secure.kafka_config("producer", "sasl.password", "not-the-password")?,
    );
    refused(
        "producer with a wrong SASL password",
        kafka,
        "Kafka refused the connection",
        "Authentication failed",
    )?;

    let ssl = format!("sslmode=verify-full&sslrootcert={}", secure.ca.display());
    for binary in ["consumer", "cdcconsumer"] {
        let mut postgres = if binary == "consumer" {
            consumer(&secure)?
        } else {
            cdcconsumer(&secure)?
        };
        postgres.env(
            "DATABASE_URL_FILE",
            secure.database_url("not-the-password", &ssl)?,
        );
        refused(
            &format!("{binary} with a wrong PostgreSQL password"),
            postgres,
            "PostgreSQL",
            "password authentication failed",
        )?;
    }

    let mut cassandra = cdcconsumer(&secure)?;
    cassandra.env(
        "CASSANDRA_PASSWORD_FILE",
        secure.write("cassandra.password", "not-the-password\n")?,
    );
    refused(
        "cdcconsumer with a wrong Cassandra password",
        cassandra,
        "Cassandra",
        "password are incorrect",
    )
}

#[test]
fn a_ca_that_did_not_sign_the_servers_certificate_stops_a_binary_with_one_clear_error() -> Result<()>
{
    let Some(secure) = secure()? else {
        return Ok(());
    };
    let other = secure.other_ca()?;
    let other_path = other.to_str().context("a CA path that is not UTF-8")?;

    let mut kafka = producer(&secure)?;
    kafka.env(
        "KAFKA_CONFIG",
        secure.kafka_config("producer", "ssl.ca.location", other_path)?,
    );
    refused(
        "producer trusting another CA",
        kafka,
        "Kafka refused the connection",
        "certificate verify failed",
    )?;

    let url = secure.database_url(
        &secure.secret("postgres-app.password")?,
        &format!("sslmode=verify-full&sslrootcert={other_path}"),
    )?;
    let mut postgres = consumer(&secure)?;
    postgres.env("DATABASE_URL_FILE", url);
    refused(
        "consumer trusting another CA",
        postgres,
        "PostgreSQL",
        "UnknownIssuer",
    )?;

    let mut cassandra = cdcconsumer(&secure)?;
    cassandra.env("CASSANDRA_CA", &other);
    refused(
        "cdcconsumer trusting another CA",
        cassandra,
        "Cassandra",
        "certificate verify failed",
    )
}

/// The keys of the stack's secrets never leave their folder's permissions: readable by the
/// stack's user only.
#[test]
fn secrets_are_readable_by_their_owner_only() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(secure) = secure()? else {
        return Ok(());
    };
    let private = |path: &Path| -> Result<()> {
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        ensure!(
            mode & 0o077 == 0,
            "{} is mode {mode:o}: others may read it",
            path.display()
        );
        Ok(())
    };
    private(&secure.secrets)?;
    for entry in std::fs::read_dir(&secure.secrets)? {
        private(&entry?.path())?;
    }
    private(&secure.ca.with_file_name("server.key"))
}

/// The brokers take SCRAM-SHA-256 as well as SCRAM-SHA-512 (the profile's default): a producer
/// that chooses it delivers every event.
#[test]
fn scram_sha_256_is_accepted_too() -> Result<()> {
    let Some(secure) = secure()? else {
        return Ok(());
    };
    let mut producer = producer(&secure)?;
    producer.env(
        "KAFKA_CONFIG",
        secure.kafka_config("producer", "sasl.mechanisms", "SCRAM-SHA-256")?,
    );
    let output = producer.stderr(Stdio::piped()).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "the producer failed with SCRAM-SHA-256:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let count = |key: &str| -> Option<u64> {
        let at = stdout.rfind(&format!(" {key}="))? + key.len() + 2;
        stdout[at..].split_whitespace().next()?.parse().ok()
    };
    let (sent, acknowledged) = (count("sent"), count("acknowledged"));
    ensure!(
        sent.is_some_and(|sent| sent > 0) && acknowledged == sent,
        "not every event was acknowledged: {stdout}"
    );
    Ok(())
}
