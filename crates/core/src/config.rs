//! Layered configuration: embedded defaults, then the file, then `OMNIGATE_*` env vars.
//!
//! Every struct denies unknown keys so a typo is an error at start, not a silently
//! ignored setting. Errors name the key and the problem.

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, de::DeserializeOwned};
use std::{net::SocketAddr, path::Path};

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {problem}")]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `whatsapp.channels.demo.app_secret`.
    pub key: String,
    /// What is wrong with it, and how to fix it.
    pub problem: String,
}

impl ConfigError {
    /// Builds an error for `key`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Loads `T` from embedded `defaults` (TOML), then `file`, then `OMNIGATE_*` env vars.
///
/// Env vars use `__` between levels: `OMNIGATE_KAFKA__BROKERS=host:9092` sets
/// `kafka.brokers`. Vars without `__` are ignored, so `OMNIGATE_LOG` style names of
/// other tools do not collide.
pub fn load<T: DeserializeOwned>(defaults: &str, file: Option<&Path>) -> Result<T, ConfigError> {
    layered(defaults, file)?
        .extract()
        .map_err(|err| from_figment(err, ""))
}

/// Reads a whole layered configuration as `T`, naming the key of any error.
pub fn extract<T: DeserializeOwned>(figment: &Figment) -> Result<T, ConfigError> {
    figment.extract().map_err(|err| from_figment(err, ""))
}

/// The layered configuration itself (defaults, then `file`, then `OMNIGATE_*` env),
/// for readers of one table at a time (connectors).
pub fn layered(defaults: &str, file: Option<&Path>) -> Result<Figment, ConfigError> {
    let mut figment = Figment::new().merge(Toml::string(defaults));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::new(
                "--config",
                format!("file {} does not exist", path.display()),
            ));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(
        Env::prefixed("OMNIGATE_")
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    );
    Ok(figment)
}

/// A figment error as a [`ConfigError`] naming the full key; `table` is the table the
/// value was read from (empty for the root).
pub(crate) fn from_figment(err: figment::Error, table: &str) -> ConfigError {
    let mut path: Vec<String> = err.path.clone();
    if !table.is_empty() {
        // Read from inside a table, figment puts the table's name last on a missing
        // field's path, and leaves it off elsewhere.
        if path.last().map(String::as_str) == Some(table) {
            path.pop();
        }
        path.insert(0, table.to_string());
    }
    let key = if path.is_empty() {
        "(root)".to_string()
    } else {
        path.join(".")
    };
    let origin = err
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    // For a missing field figment's path stops at the parent table; name the field itself.
    let key = match &err.kind {
        figment::error::Kind::MissingField(field) => format!("{key}.{field}")
            .trim_start_matches("(root).")
            .to_string(),
        _ => key,
    };
    ConfigError::new(key, format!("{}{origin}", err.kind))
}

/// Fails when a secret is empty, naming the key and the env var that can set it.
pub fn require_secret(key: &str, secret: &SecretString) -> Result<(), ConfigError> {
    if secret.expose_secret().trim().is_empty() {
        let env = format!("OMNIGATE_{}", key.replace('.', "__").to_uppercase());
        return Err(ConfigError::new(
            key,
            format!("secret is missing or empty; set it in the config file or with {env}"),
        ));
    }
    Ok(())
}

/// Channel names end up in URLs, metric labels and blob keys: a-z, 0-9, '-' and '_',
/// up to 64 characters.
pub fn valid_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger bodies get 413. Default 3 MiB
    /// (WhatsApp sends up to 3 MB).
    pub body_limit_bytes: usize,
    /// Longest a request may take before it is answered 503, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Longest a client may take to send a request's head (request line and headers),
    /// in milliseconds; then the connection is closed. Default 10000.
    #[serde(default = "defaults::header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Longest a request body may take to arrive in full, in milliseconds; a body
    /// trickled in slower is cut off with 408 and the connection closed. Default 30000.
    #[serde(default = "defaults::body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// A connection with no request in flight and no bytes moving for this long is
    /// closed, in milliseconds. Default 60000.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Most connections open at once on `listen`; more are closed at once. Lowered at
    /// start to leave room under the process's open-file limit. Default 8192.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Most connections open at once from one client address; more are closed at once.
    /// Behind a load balancer every connection comes from its addresses: raise this
    /// to `max_connections` there. 0 turns the per-client cap off. Default 512.
    #[serde(default = "defaults::max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// A second listener for `/healthz`, `/readyz` and `/metrics` only (e.g.
    /// `0.0.0.0:9090` for Kubernetes probes), with its own small connection cap, so
    /// probes are answered even when the public caps are reached. Unset: none (the
    /// public listener serves them as well, always).
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
}

/// Defaults of keys added after the first release, so older config files still load.
mod defaults {
    pub fn header_timeout_ms() -> u64 {
        10_000
    }
    pub fn body_timeout_ms() -> u64 {
        30_000
    }
    pub fn idle_timeout_ms() -> u64 {
        60_000
    }
    pub fn max_connections() -> usize {
        8192
    }
    pub fn max_connections_per_client() -> usize {
        512
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `json` for production, `pretty` for a terminal.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,omnigate_kafka=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// One `/v1` API key. Only its SHA-256 is stored, never the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A label for logs, e.g. `helpdesk-prod`.
    pub name: String,
    /// The tenant the key acts for.
    pub tenant: String,
    /// Lowercase hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
}

impl ApiKeyConfig {
    /// Checks that the hash looks like a SHA-256, naming `key` on failure.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let ok = self.sha256.len() == 64 && self.sha256.chars().all(|c| c.is_ascii_hexdigit());
        if !ok {
            return Err(ConfigError::new(
                format!("{key}.sha256"),
                "must be the 64-character hex SHA-256 of the key, not the key itself",
            ));
        }
        Ok(())
    }
}

/// Where blobs (media, attachments, raw payloads) are kept.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobConfig {
    /// `file:///abs/path`, a relative `file:data/blobs`, or `s3://bucket/prefix`.
    pub url: String,
    /// S3 region; empty uses `AWS_REGION`.
    #[serde(default)]
    pub s3_region: String,
    /// S3-compatible endpoint (MinIO, R2); empty uses AWS.
    #[serde(default)]
    pub s3_endpoint: String,
    /// S3 access key id; empty uses the AWS environment and instance credentials.
    #[serde(default)]
    pub s3_access_key_id: String,
    /// S3 secret access key.
    #[serde(default = "empty_secret")]
    pub s3_secret_access_key: SecretString,
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

impl std::fmt::Debug for BlobConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobConfig")
            .field("url", &self.url)
            .field("s3_region", &self.s3_region)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field("s3_secret_access_key", &"[REDACTED]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        server: ServerConfig,
        blobs: BlobConfig,
    }

    const DEFAULTS: &str = r#"
        [server]
        listen = "127.0.0.1:8080"
        body_limit_bytes = 100
        request_timeout_ms = 1000
        shutdown_grace_ms = 1000
        [blobs]
        url = "file:data/blobs"
    "#;

    fn load_with(file: &str) -> Result<Sample, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        load(DEFAULTS, Some(&path))
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_with("[server]\nlistn = \"x\"\n").unwrap_err();
        assert_eq!(err.key, "server.listn", "{err}");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = load_with("[server]\nlisten = \"not an address\"\n").unwrap_err();
        assert_eq!(err.key, "server.listen", "{err}");
    }

    #[test]
    fn secrets_never_reach_debug() {
        let cfg =
            load_with("[blobs]\nurl = \"s3://b\"\ns3_secret_access_key = \"hunter2\"\n").unwrap();
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert_eq!(
            cfg.server.body_limit_bytes, 100,
            "defaults apply under the file"
        );
        assert!(
            require_secret(
                "blobs.s3_secret_access_key",
                &cfg.blobs.s3_secret_access_key
            )
            .is_ok()
        );
        let err = require_secret("a.b_c", &SecretString::from(" ")).unwrap_err();
        assert!(err.to_string().contains("OMNIGATE_A__B_C"), "{err}");
    }
}
