//! Secrets stay out of what the binaries print: `--help` of every binary and subcommand, with a
//! database password and a Kafka password in the environment, shows neither; a secrets file that
//! cannot be read stops the program at once with an error naming the file, not its content.
//! Needs no stack.

use std::process::Command;

use anyhow::{ensure, Result};
use stack_tests::workspace_binary;

const URL_SECRET: &str = "s3cret-in-the-url";
const KAFKA_SECRET: &str = "s3cret-for-kafka";

fn run(binary: &str, args: &[&str]) -> Result<(bool, String)> {
    let output = Command::new(workspace_binary(binary)?)
        .args(args)
        .env(
            "DATABASE_URL",
            format!("postgres://app:{URL_SECRET}@db.example:5432/cdc_db"),
        )
        .env(
            "KAFKA_OPTIONS",
            format!("security.protocol=SASL_SSL\nsasl.password={KAFKA_SECRET}"),
        )
        .env_remove("KAFKA_CONFIG")
        .env_remove("DATABASE_URL_FILE")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

#[test]
fn help_with_secrets_in_the_environment_shows_none() -> Result<()> {
    let cases: [(&str, &[&str]); 8] = [
        ("producer", &["--help"]),
        ("consumer", &["--help"]),
        ("consumer", &["dlq", "list", "--help"]),
        ("consumer", &["dlq", "replay", "--help"]),
        ("cdcconsumer", &["--help"]),
        ("cdcconsumer", &["verify", "--help"]),
        ("cdcconsumer", &["dlq", "replay", "--help"]),
        ("console", &["--help"]),
    ];
    for (binary, args) in cases {
        let (ok, text) = run(binary, args)?;
        ensure!(ok, "{binary} {args:?} failed:\n{text}");
        ensure!(
            text.contains("KAFKA_OPTIONS"),
            "{binary} {args:?}: the help does not name KAFKA_OPTIONS:\n{text}"
        );
        ensure!(
            !text.contains(URL_SECRET) && !text.contains(KAFKA_SECRET),
            "{binary} {args:?} printed a secret:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn an_unreadable_secrets_file_stops_the_program_naming_the_file() -> Result<()> {
    let missing = "/nonexistent/cdc/kafka.properties";
    for (binary, flag) in [
        ("consumer", "--kafka-config"),
        ("cdcconsumer", "--database-url-file"),
    ] {
        // Built before the clock starts.
        workspace_binary(binary)?;
        let started = std::time::Instant::now();
        let (ok, text) = run(binary, &[flag, missing])?;
        ensure!(!ok, "{binary} {flag} {missing} succeeded:\n{text}");
        ensure!(
            text.contains(flag) && text.contains(&format!("reading {missing}")),
            "{binary}: the error does not name the option and the file:\n{text}"
        );
        ensure!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{binary} took {:?} to refuse a missing file",
            started.elapsed()
        );
    }
    Ok(())
}
