//! Keeping secrets off every page: configuration values whose keys name a credential, and
//! passwords inside connection URLs.

/// What is shown instead of a secret.
pub const REDACTED: &str = "[redacted]";

/// Whether a configuration key names a secret: a password, secret, token, credential or JAAS
/// configuration anywhere in it, or key material (its last part ending in `key`, as in
/// `api.key`, `ssl.key`, `private_key`; `key.converter` or `message.key.columns` are not secrets).
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "jaas",
    ]
    .iter()
    .any(|word| key.contains(word))
    {
        return true;
    }
    let parts: Vec<&str> = key
        .split(['.', '_', '-'])
        .filter(|p| !p.is_empty())
        .collect();
    parts.last().is_some_and(|last| last.ends_with("key"))
        || parts
            .windows(2)
            .any(|w| w[0] == "key" && matches!(w[1], "pem" | "store" | "material"))
}

/// A configuration value as it may be shown: redacted when its key names a secret, with a
/// password inside a URL (`scheme://user:password@host`) masked otherwise.
pub fn config_value(key: &str, value: &str) -> String {
    if is_secret_key(key) {
        REDACTED.to_owned()
    } else {
        url_password(value)
    }
}

/// `scheme://user:password@host/…` with the password replaced; other text unchanged.
pub fn url_password(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return text.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return text.to_owned();
    };
    format!(
        "{}://{}:{}{}",
        &text[..scheme_end],
        &userinfo[..colon],
        REDACTED,
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys() {
        for key in [
            "database.password",
            "sasl.jaas.config",
            "ssl.key.password",
            "api.key",
            "aws.secret.access.key",
            "oauth.token.endpoint",
            "private_key",
            "ssl.keystore.key",
            "ssl.key.pem",
            "connection.PASSWORD",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "key.converter",
            "key.converter.schemas.enable",
            "message.key.columns",
            "database.user",
            "topic.prefix",
            "cleanup.policy",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn url_passwords() {
        assert_eq!(
            url_password("postgres://cdc_user:cdc_password@127.0.0.1:5432/cdc_db"),
            "postgres://cdc_user:[redacted]@127.0.0.1:5432/cdc_db"
        );
        assert_eq!(
            url_password("http://127.0.0.1:8083"),
            "http://127.0.0.1:8083"
        );
        assert_eq!(
            url_password("postgres://user@host/db"),
            "postgres://user@host/db"
        );
        assert_eq!(url_password("plain text"), "plain text");
        assert_eq!(config_value("database.password", "x"), REDACTED);
        assert_eq!(config_value("database.user", "debezium"), "debezium");
    }
}
