//! Reaching a secured Cassandra cluster: credentials, TLS and the local datacenter, as options
//! any binary that talks to Cassandra flattens into its own (`cassandra` feature).

use std::path::{Path, PathBuf};

use scylla::client::session_builder::SessionBuilder;

use crate::config::{read_secret_file, ExposeSecret, Secret};

/// How to log in to the cluster and protect the connection: credentials, TLS, the local
/// datacenter. Nothing set: plaintext without authentication, as on the local stack.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CassandraAccess {
    /// Role to log in as (PasswordAuthenticator).
    #[arg(
        long = "cassandra-username",
        env = "CASSANDRA_USERNAME",
        value_name = "ROLE"
    )]
    pub username: Option<String>,

    /// The role's password; prefer `--cassandra-password-file` (a flag shows in `ps`).
    #[arg(
        long = "cassandra-password",
        env = "CASSANDRA_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<Secret>,

    /// A file whose first line is the role's password; wins over `--cassandra-password`.
    #[arg(
        long = "cassandra-password-file",
        env = "CASSANDRA_PASSWORD_FILE",
        value_name = "FILE",
        value_parser = read_secret_file
    )]
    pub password_file: Option<Secret>,

    /// CA certificate(s) (PEM) to verify the nodes with; setting it turns TLS on. Each node's
    /// certificate must name the address it is reached at.
    #[arg(long = "cassandra-ca", env = "CASSANDRA_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Client certificate chain (PEM), for clusters that require one; needs `--cassandra-client-key`.
    #[arg(
        long = "cassandra-client-cert",
        env = "CASSANDRA_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(
        long = "cassandra-client-key",
        env = "CASSANDRA_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// The datacenter this process runs in: requests go to its nodes (datacenter-aware routing).
    #[arg(
        long = "cassandra-local-datacenter",
        env = "CASSANDRA_LOCAL_DATACENTER",
        value_name = "DC"
    )]
    pub local_datacenter: Option<String>,
}

/// The access settings cannot be used: a problem of the configuration, never worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("a Cassandra password needs --cassandra-username")]
    PasswordWithoutUser,
    #[error("--cassandra-username needs a password (--cassandra-password-file)")]
    UserWithoutPassword,
    #[error("setting up TLS to Cassandra from {what} failed: {source}")]
    Tls {
        what: String,
        source: openssl::error::ErrorStack,
    },
}

impl CassandraAccess {
    fn password(&self) -> Option<&Secret> {
        self.password_file.as_ref().or(self.password.as_ref())
    }

    /// `builder` with the credentials, TLS and datacenter preference applied.
    pub fn apply(&self, mut builder: SessionBuilder) -> Result<SessionBuilder, AccessError> {
        match (&self.username, self.password()) {
            (Some(user), Some(password)) => builder = builder.user(user, password.expose_secret()),
            (None, Some(_)) => return Err(AccessError::PasswordWithoutUser),
            (Some(_), None) => return Err(AccessError::UserWithoutPassword),
            (None, None) => {}
        }
        if let Some(ca) = &self.ca {
            builder = builder.tls_context(Some(self.tls(ca)?));
        }
        if let Some(datacenter) = &self.local_datacenter {
            builder = builder.prefer_datacenter(datacenter.clone());
        }
        Ok(builder)
    }

    fn tls(&self, ca: &Path) -> Result<scylla::client::session::OpenSsl010Config, AccessError> {
        use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
        let failed = |what: &Path| {
            let what = what.display().to_string();
            move |source| AccessError::Tls { what, source }
        };
        let mut tls = SslConnector::builder(SslMethod::tls_client()).map_err(failed(ca))?;
        tls.set_ca_file(ca).map_err(failed(ca))?;
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls.set_certificate_chain_file(cert).map_err(failed(cert))?;
            tls.set_private_key_file(key, SslFiletype::PEM)
                .map_err(failed(key))?;
            tls.check_private_key().map_err(failed(key))?;
        }
        Ok(scylla::client::session::OpenSsl010Config::new(tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_settings_that_cannot_work_are_refused_before_connecting() {
        let builder = || SessionBuilder::new().known_node("127.0.0.1:9042");
        let none = CassandraAccess::default();
        assert!(none.apply(builder()).is_ok());
        let password_only = CassandraAccess {
            password: Some(Secret::from("pw")),
            ..CassandraAccess::default()
        };
        assert!(matches!(
            password_only.apply(builder()),
            Err(AccessError::PasswordWithoutUser)
        ));
        let user_only = CassandraAccess {
            username: Some("cdcconsumer".to_owned()),
            ..CassandraAccess::default()
        };
        assert!(matches!(
            user_only.apply(builder()),
            Err(AccessError::UserWithoutPassword)
        ));
        let missing_ca = CassandraAccess {
            ca: Some("/nonexistent/ca.pem".into()),
            ..CassandraAccess::default()
        };
        let error = missing_ca.apply(builder()).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("/nonexistent/ca.pem")),
            "{error:?}"
        );
    }
}
