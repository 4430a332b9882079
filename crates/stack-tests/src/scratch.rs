//! A PostgreSQL cluster of a test's own: the same PostgreSQL 15 binaries as the stack, a data
//! folder under the temp folder, a free port, trust authentication on loopback. For what must not
//! happen to the stack's cluster (settings that invalidate replication slots, say). Stopped and
//! removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::process::free_address;
use crate::unique_name;

/// A running scratch cluster.
#[derive(Debug)]
pub struct ScratchPostgres {
    dir: PathBuf,
    bin: PathBuf,
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
}

/// Whether this process runs as root (PostgreSQL then runs as the `postgres` user).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// `program args…`, as the postgres user when running as root; fails with its output.
fn run(program: &Path, args: &[&str]) -> Result<()> {
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    let output = command
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    ensure!(
        output.status.success(),
        "{} {args:?} failed ({}): {}{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

impl ScratchPostgres {
    /// initdb, `settings` appended to the configuration, started and accepting connections.
    pub async fn start(settings: &[(&str, &str)]) -> Result<Self> {
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tokio::task::spawn_blocking(move || Self::start_blocking(&settings)).await?
    }

    fn start_blocking(settings: &[(String, String)]) -> Result<Self> {
        let bin = PathBuf::from(
            std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned()),
        );
        let dir = std::env::temp_dir().join(unique_name("scratch_pg"));
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()?;
            ensure!(status.success(), "chown of {} failed", dir.display());
        }
        let port = free_address()?
            .rsplit(':')
            .next()
            .context("no port")?
            .to_owned();
        let data = dir.join("data");
        let data_arg = data.to_string_lossy().into_owned();
        run(
            &bin.join("initdb"),
            &[
                "-D",
                &data_arg,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
        )?;
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n",
            dir.display()
        );
        for (key, value) in settings {
            conf.push_str(&format!("{key} = '{value}'\n"));
        }
        let auto_conf = data.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&auto_conf).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&auto_conf, existing)?;
        let this = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            dir,
        };
        let log = this.dir.join("postgres.log").to_string_lossy().into_owned();
        run(
            &this.bin.join("pg_ctl"),
            &["-D", &data_arg, "-l", &log, "-w", "-t", "60", "start"],
        )?;
        Ok(this)
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        let _ = run(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
