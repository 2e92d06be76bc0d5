//! The service configuration: a TOML file overlaid by `BIZCALL_<SECTION>__<KEY>`
//! environment variables, with defaults that run one instance with nothing
//! else installed (SPEC section 7).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration, one struct per TOML section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub webhook: WebhookConfig,
    pub bus: BusConfig,
    pub amqp: AmqpConfig,
    pub stomp: StompConfig,
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP and WebSocket listener binds.
    pub listen: SocketAddr,
    /// Peers whose `X-Forwarded-For` is believed (load balancers).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://file.db` or `postgres://user@host/db`.
    pub url: String,
    /// Calls older than this many days are deleted by the retention job.
    pub retention_days: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://bizcall.db".into(),
            retention_days: 90,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Path of the provider's CDR callback.
    pub path: String,
    /// Shared secret the provider must send; empty means none is asked.
    pub key: String,
    /// Peers allowed to call the webhook; empty means any.
    pub allow_from: Vec<IpNet>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            path: "/bizcall/cdr".into(),
            key: String::new(),
            allow_from: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process bus: one instance.
    Local,
    /// RabbitMQ fanout exchange: several instances.
    Amqp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    pub kind: BusKind,
    /// How long a call event may still become a popup after it is published.
    #[serde(with = "duration_str")]
    pub message_ttl: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::Local,
            message_ttl: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    None,
    Auto,
    Manual,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    pub url: String,
    pub exchange: String,
    pub queue_prefix: String,
    pub ack_mode: AckMode,
    pub prefetch: u16,
    pub retry_max_attempts: u32,
    #[serde(with = "duration_str")]
    pub retry_initial_interval: Duration,
    pub retry_multiplier: f64,
    #[serde(with = "duration_str")]
    pub retry_max_interval: Duration,
    pub dead_letter: bool,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "bizcall-exchange".into(),
            queue_prefix: "bizcall-cdr-inbound-call".into(),
            ack_mode: AckMode::Auto,
            prefetch: 250,
            retry_max_attempts: 2,
            retry_initial_interval: Duration::from_secs(2),
            retry_multiplier: 2.0,
            retry_max_interval: Duration::from_secs(10),
            dead_letter: false,
            dead_letter_exchange: "bizcall-dlx".into(),
            dead_letter_queue: "bizcall-dlq".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StompConfig {
    pub path: String,
    /// The server's heart-beat interval, both directions.
    #[serde(with = "duration_str")]
    pub heartbeat: Duration,
    /// Largest frame accepted from a tablet, in bytes.
    pub max_frame: usize,
    /// Frames waiting for one slow tablet before it is disconnected.
    pub outbound_queue: usize,
}

impl Default for StompConfig {
    fn default() -> Self {
        Self {
            path: "/ws".into(),
            heartbeat: Duration::from_secs(10),
            max_frame: 65536,
            outbound_queue: 256,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of the admin endpoints; empty turns them off.
    pub token: String,
}

/// A configuration that could not be loaded, with the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then the file (the given one, which must exist, or
    /// `bizcall.toml` when present), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError(format!(
                        "config file {} does not exist",
                        path.display()
                    )));
                }
                fig = fig.merge(Toml::file(path));
            }
            None => {
                if Path::new("bizcall.toml").is_file() {
                    fig = fig.merge(Toml::file("bizcall.toml"));
                }
            }
        }
        fig = fig.merge(Env::prefixed("BIZCALL_").split("__"));
        let config: Config = fig.extract().map_err(|e| ConfigError(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, what: &str| Err(ConfigError(format!("{key}: {what}")));
        if !self.webhook.path.starts_with('/') {
            return bad("webhook.path", "must start with '/'");
        }
        if !self.stomp.path.starts_with('/') {
            return bad("stomp.path", "must start with '/'");
        }
        if self.webhook.path == self.stomp.path {
            return bad("stomp.path", "must differ from webhook.path");
        }
        if self.bus.message_ttl.is_zero() {
            return bad("bus.message_ttl", "must be more than zero");
        }
        if self.stomp.max_frame < 1024 {
            return bad("stomp.max_frame", "must be at least 1024 bytes");
        }
        if self.stomp.outbound_queue == 0 {
            return bad("stomp.outbound_queue", "must be at least 1");
        }
        if self.stomp.heartbeat.as_millis() > u32::MAX as u128 {
            return bad("stomp.heartbeat", "is too long");
        }
        if !(self.amqp.retry_multiplier >= 1.0 && self.amqp.retry_multiplier.is_finite()) {
            return bad("amqp.retry_multiplier", "must be a number of at least 1.0");
        }
        if self.amqp.prefetch == 0 {
            return bad("amqp.prefetch", "must be at least 1");
        }
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return bad(
                "database.url",
                "must start with sqlite: or postgres:// (for example sqlite://bizcall.db)",
            );
        }
        Ok(())
    }

    /// Whether `peer` may be believed when it sends `X-Forwarded-For`.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.server
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer))
    }
}

/// One line that names the key and what was wrong with it.
fn describe(err: figment::Error) -> String {
    let mut lines = Vec::new();
    for e in err {
        let key = if e.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", e.path.join("."))
        };
        lines.push(format!("{key}{}", e.kind));
    }
    lines.join("; ")
}

/// Durations as human strings: "30s", "500ms", "2m".
pub mod duration_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "expected a duration such as \"30s\" or \"500ms\", got {text:?} ({e})"
            ))
        })
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return its error type
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::default();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database.url, "sqlite://bizcall.db");
        assert_eq!(c.bus.kind, BusKind::Local);
        assert_eq!(c.bus.message_ttl, Duration::from_secs(30));
        assert_eq!(c.amqp.ack_mode, AckMode::Auto);
        assert_eq!(c.amqp.prefetch, 250);
        assert_eq!(c.stomp.max_frame, 65536);
        assert_eq!(c.stomp.outbound_queue, 256);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn file_and_environment_overlay() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "x.toml",
                "[bus]\nmessage_ttl = \"5s\"\n[amqp]\nack_mode = \"manual\"\n",
            )?;
            jail.set_env("BIZCALL_BUS__KIND", "amqp");
            jail.set_env("BIZCALL_SERVER__TRUSTED_PROXIES", "[\"10.0.0.0/8\"]");
            let c = Config::load(Some(Path::new("x.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.bus.message_ttl, Duration::from_secs(5));
            assert_eq!(c.bus.kind, BusKind::Amqp);
            assert_eq!(c.amqp.ack_mode, AckMode::Manual);
            assert!(c.is_trusted_proxy("10.1.2.3".parse().unwrap()));
            assert!(!c.is_trusted_proxy("11.1.2.3".parse().unwrap()));
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BIZCALL_BUS__MESSAGE_TTL", "soon");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("bus.message_ttl"), "{err}");
            assert!(err.contains("soon"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("BIZCALL_AMQP__ACK_MODE", "sometimes");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("amqp.ack_mode"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("bizcall.toml", "[server]\nlisten = \"nowhere\"\n")?;
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("server.listen"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/b.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/b.toml"), "{err}");
    }
}
