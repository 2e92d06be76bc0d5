//! The service configuration: a TOML file overlaid by `BIZCALL_<SECTION>__<KEY>`
//! environment variables, with defaults that run one instance with nothing
//! else installed (docs/configuration.md).

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
    pub compat: CompatConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP and WebSocket listener binds.
    pub listen: SocketAddr,
    /// Peers whose `X-Forwarded-For` is believed (load balancers).
    pub trusted_proxies: Vec<IpNet>,
    /// Failed tablet or admin sign-ins one client address may make within
    /// `auth_fail_window` before its sign-ins are refused for the rest of
    /// it; 0 turns refusing off (failures are still logged and counted).
    pub auth_fail_limit: u32,
    #[serde(with = "duration_str")]
    pub auth_fail_window: Duration,
    /// Open connections on `listen` (tablets included); beyond it new ones
    /// are refused at once. Unset: derived from the open-file limit.
    pub max_connections: Option<usize>,
    /// Connections one client address may hold that are not (yet) a
    /// connected tablet: HTTP requests and WebSockets before CONNECT.
    /// 0 turns the cap off.
    pub max_pending_per_address: usize,
    /// Time a client has to send a request's headers, from the connection's
    /// start or the request's first byte (a WebSocket upgrade included).
    #[serde(with = "duration_str")]
    pub header_timeout: Duration,
    /// Time a kept-alive HTTP connection may wait for its next request.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Time a client has to send a request's whole body once its headers
    /// are in; a slower body is refused with 408 (a trickle cannot hold a
    /// connection slot).
    #[serde(with = "duration_str")]
    pub body_timeout: Duration,
    /// IPv6 clients share every per-address cap and count by this prefix
    /// (64: one subscriber's block); IPv4 clients count per address.
    pub ipv6_prefix: u8,
}

impl ServerConfig {
    /// How client addresses are grouped for every per-address cap.
    pub fn address_group(&self) -> crate::address::AddressGroup {
        crate::address::AddressGroup::new(self.ipv6_prefix)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trusted_proxies: Vec::new(),
            auth_fail_limit: 10,
            auth_fail_window: Duration::from_secs(60),
            max_connections: None,
            max_pending_per_address: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
            ipv6_prefix: 64,
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
    /// At most this many connections in the instance's PostgreSQL pool
    /// (two background writers have one each besides). SQLite ignores it.
    pub pool_size: u32,
    /// The longest a CDR waits for the database (a connection and the
    /// write) before the webhook answers `503` with `Retry-After`; also
    /// the bound of `/readyz`'s database check.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// How often the fleet jobs (retention, trail prune) run, on one
    /// instance of the fleet at a time (src/fleet_jobs.rs).
    #[serde(with = "duration_str")]
    pub jobs_interval: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://bizcall.db".into(),
            retention_days: 90,
            pool_size: PG_POOL_SIZE,
            timeout: Duration::from_secs(3),
            jobs_interval: Duration::from_secs(3600),
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
    /// Says the operator means a webhook with neither `key` nor
    /// `allow_from`: without it such an instance warns at start, and with
    /// `bus.kind = "amqp"` (a production shape) refuses to start.
    pub open: bool,
    /// A second listener serving only the webhook and the health checks,
    /// with its own connection cap, so that a flood of connections on
    /// `server.listen` cannot keep the provider out. Unset: none.
    pub listen: Option<SocketAddr>,
    /// Open connections on `webhook.listen`.
    pub max_connections: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            path: "/bizcall/cdr".into(),
            key: String::new(),
            allow_from: Vec::new(),
            open: false,
            listen: None,
            max_connections: 256,
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
    /// With RabbitMQ, how often each instance reads the database for call
    /// changes the bus did not bring (docs/reliability.md); 0 turns the
    /// relay off.
    #[serde(with = "duration_str")]
    pub relay_interval: Duration,
}

impl BusConfig {
    /// `message_ttl` for clock arithmetic on event times: the one
    /// conversion, exact because `validate` bounds the TTL to a day.
    pub fn ttl(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.message_ttl).unwrap_or(chrono::Duration::MAX)
    }
}

/// Connections to PostgreSQL per instance, unless `database.pool_size`
/// says otherwise.
pub const PG_POOL_SIZE: u32 = 16;

/// The longest `bus.message_ttl`: a popup a day late is no popup.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::Local,
            message_ttl: Duration::from_secs(30),
            relay_interval: Duration::from_millis(500),
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

/// How call events reach instances (`amqp.routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// One fanout exchange: every instance receives every event.
    Fanout,
    /// One direct exchange keyed by store slug: an instance receives the
    /// events of the stores it holds tablets of.
    Store,
}

impl Routing {
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Fanout => "fanout",
            Routing::Store => "store",
        }
    }
}

/// The kind of the dead-letter queue (docs/rabbitmq.md, "Dead letters").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated over the cluster's nodes: survives the loss of one.
    Quorum,
    /// On one node only (what bizcall declared before quorum queues).
    Classic,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// One broker URL, or a cluster's nodes: a TOML list, or one string
    /// with the URLs separated by commas. Kept here as that string.
    #[serde(deserialize_with = "url_list")]
    pub url: String,
    pub exchange: String,
    pub queue_prefix: String,
    pub ack_mode: AckMode,
    pub prefetch: u16,
    /// Attempts to hand an event over, the first included (Spring's
    /// `max-attempts`): 2 is the first try and one retry.
    pub retry_max_attempts: u32,
    #[serde(with = "duration_str")]
    pub retry_initial_interval: Duration,
    pub retry_multiplier: f64,
    #[serde(with = "duration_str")]
    pub retry_max_interval: Duration,
    pub dead_letter: bool,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub dead_letter_queue_type: QueueType,
    /// How events reach instances: every instance gets every event
    /// (`fanout`), or only the instances with a tablet of its store
    /// (`store`, docs/rabbitmq.md "Store-routed delivery").
    pub routing: Routing,
    /// The direct exchange of `routing = "store"`; empty: `<exchange>-store`.
    pub routed_exchange: String,
    /// How long a store stays bound after its last tablet here left.
    #[serde(with = "duration_str")]
    pub unbind_grace: Duration,
    /// The AMQP heart-beat asked of the broker: the last resort against a
    /// silent link (the canary finds one sooner).
    #[serde(with = "duration_str")]
    pub heartbeat: Duration,
    /// A link whose canary has not come back, or whose publish has not
    /// been confirmed, for this long is declared dead and replaced.
    #[serde(with = "duration_str")]
    pub link_timeout: Duration,
    pub tls: AmqpTlsConfig,
}

impl AmqpConfig {
    /// The direct exchange store-routed events go to.
    pub fn routed_exchange(&self) -> String {
        if self.routed_exchange.is_empty() {
            format!("{}-store", self.exchange)
        } else {
            self.routed_exchange.clone()
        }
    }

    /// The broker nodes in `url`, in the order written.
    pub fn nodes(&self) -> Vec<String> {
        self.url
            .split([',', ' ', '\n', '\t'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// TLS for `amqps://` nodes. The system's root certificates are always
/// trusted; `ca_file` adds to them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpTlsConfig {
    /// PEM certificates (a private CA) trusted besides the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate (and its chain) for brokers that ask for one.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// The name checked against the broker's certificate (and sent as
    /// SNI) instead of the URL's host.
    pub server_name: Option<String>,
}

/// `amqp.url` as one string or a list of strings.
fn url_list<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s,
        OneOrMany::Many(v) => v.join(","),
    })
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
            dead_letter_queue_type: QueueType::Quorum,
            routing: Routing::Fanout,
            routed_exchange: String::new(),
            unbind_grace: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            link_timeout: Duration::from_secs(3),
            tls: AmqpTlsConfig::default(),
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
    /// Browser `Origin`s allowed on `/ws` and SockJS; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Connected tablets one token may have on this instance at once; one
    /// more is refused. 0: no cap.
    pub max_connections_per_token: usize,
    /// Connected tablets one client address (IPv6: one
    /// `server.ipv6_prefix` block) may have on this instance. 0: no cap.
    pub max_connections_per_address: usize,
}

impl StompConfig {
    /// Whether `origin` is one of `allowed_origins` (scheme, host and port
    /// compared as written, ignoring case and a trailing slash).
    pub fn origin_listed(&self, origin: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/');
        self.allowed_origins
            .iter()
            .any(|o| o.trim().trim_end_matches('/').eq_ignore_ascii_case(origin))
    }

    /// Whether a request carrying `origin` may use the tablet endpoints:
    /// no `Origin` (not a browser) or an empty list allows it.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(_) if self.allowed_origins.is_empty() => true,
            Some(o) => self.origin_listed(o),
        }
    }
}

impl Default for StompConfig {
    fn default() -> Self {
        Self {
            path: "/ws".into(),
            heartbeat: Duration::from_secs(10),
            max_frame: 65536,
            outbound_queue: 256,
            allowed_origins: Vec::new(),
            max_connections_per_token: 16,
            max_connections_per_address: 1024,
        }
    }
}

/// Compatibility with the Spring service's tablets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompatConfig {
    /// Base path of the SockJS endpoint; empty turns it off.
    pub sockjs_path: String,
    /// Accept token-less CONNECTs from browsers on `stomp.allowed_origins`.
    pub anonymous: bool,
}

impl Default for CompatConfig {
    fn default() -> Self {
        Self {
            sockjs_path: "/ws/v1/offline-store-pad".into(),
            anonymous: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of the admin endpoints; empty turns them off.
    pub token: String,
}

/// How log lines are written (to standard error; the level comes from `RUST_LOG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines (journald, Loki, CloudWatch).
    Json,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// A configuration that could not be loaded, with the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// How this instance's bus delivers events: `local`, `fanout` or
    /// `store` (instances of different modes do not see each other).
    pub fn bus_mode(&self) -> &'static str {
        match self.bus.kind {
            BusKind::Local => "local",
            BusKind::Amqp => self.amqp.routing.as_str(),
        }
    }

    /// Whether anybody may post CDRs: neither `webhook.key` nor
    /// `webhook.allow_from` is set.
    pub fn webhook_is_open(&self) -> bool {
        self.webhook.key.is_empty() && self.webhook.allow_from.is_empty()
    }

    /// An instance on RabbitMQ (a production shape) does not start with a
    /// webhook open to anybody unless `webhook.open = true` says so: anyone
    /// could pre-send a provider's next `seq` with wrong numbers, so that
    /// the real CDR gets 409.
    pub fn check_webhook_exposure(&self) -> Result<(), ConfigError> {
        if self.bus.kind == BusKind::Amqp && self.webhook_is_open() && !self.webhook.open {
            return Err(ConfigError(
                "webhook: open to anybody (no webhook.key, no webhook.allow_from) with bus.kind = \"amqp\": \
                 set webhook.key (the provider sends it as ?key= or X-Bizcall-Key) or webhook.allow_from \
                 (the provider's addresses), or webhook.open = true if anybody may post CDRs on purpose"
                    .into(),
            ));
        }
        Ok(())
    }

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
        // Only `BIZCALL_<SECTION>__<KEY>` is configuration: other variables
        // that share the prefix (the tests' `BIZCALL_TEST_PG`) are not ours.
        fig = fig.merge(
            Env::prefixed("BIZCALL_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
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
        // The service's own pages and endpoints cannot be moved over.
        let taken = |path: &str| {
            [
                "/",
                "/tablet",
                "/favicon.ico",
                "/healthz",
                "/readyz",
                "/metrics",
                "/tablet.js",
                "/tablet.css",
                "/sw.js",
                "/manifest.webmanifest",
                "/icon-192.png",
                "/icon-512.png",
                "/admin",
                "/admin.js",
                "/admin-strings.js",
                "/admin.css",
            ]
            .contains(&path)
                || path.starts_with("/api/")
                || path.starts_with("/tablet/")
        };
        if taken(&self.webhook.path) {
            return bad("webhook.path", "is one of bizcall's own paths");
        }
        if taken(&self.stomp.path) {
            return bad("stomp.path", "is one of bizcall's own paths");
        }
        if self.webhook.path == self.stomp.path {
            return bad("stomp.path", "must differ from webhook.path");
        }
        let sockjs = &self.compat.sockjs_path;
        if !sockjs.is_empty() {
            if !sockjs.starts_with('/') || sockjs.ends_with('/') {
                return bad(
                    "compat.sockjs_path",
                    "must start with '/' and not end with one (or be empty to turn SockJS off)",
                );
            }
            if sockjs == &self.stomp.path || sockjs == &self.webhook.path {
                return bad(
                    "compat.sockjs_path",
                    "must differ from stomp.path and webhook.path",
                );
            }
        }
        if self.compat.anonymous && self.stomp.allowed_origins.is_empty() {
            return bad(
                "compat.anonymous",
                "token-less tablets are accepted only from listed browser origins: \
                 set stomp.allowed_origins (for example [\"https://pad.example.com\"]) \
                 or turn compat.anonymous off",
            );
        }
        if self.server.auth_fail_limit > 0 && self.server.auth_fail_window.is_zero() {
            return bad("server.auth_fail_window", "must be more than zero");
        }
        if self.database.jobs_interval < Duration::from_secs(1) {
            return bad("database.jobs_interval", "must be at least \"1s\"");
        }
        if self.bus.message_ttl.is_zero() {
            return bad("bus.message_ttl", "must be more than zero");
        }
        if self.bus.message_ttl > MAX_TTL {
            return bad("bus.message_ttl", "must be at most a day (\"24h\")");
        }
        if self.amqp.retry_max_interval > MAX_TTL || self.amqp.retry_initial_interval > MAX_TTL {
            return bad(
                "amqp.retry_max_interval",
                "retry intervals must be at most a day (\"24h\")",
            );
        }
        if self.stomp.max_frame < 1024 {
            return bad("stomp.max_frame", "must be at least 1024 bytes");
        }
        if self.server.body_timeout.is_zero() {
            return bad("server.body_timeout", "must be more than zero");
        }
        if self.server.ipv6_prefix > 128 {
            return bad("server.ipv6_prefix", "must be at most 128");
        }
        if self.server.header_timeout.is_zero() {
            return bad("server.header_timeout", "must be more than zero");
        }
        if self.server.idle_timeout.is_zero() {
            return bad("server.idle_timeout", "must be more than zero");
        }
        if self.server.max_connections == Some(0) {
            return bad("server.max_connections", "must be at least 1");
        }
        if self.database.pool_size < 2 {
            return bad("database.pool_size", "must be at least 2");
        }
        if self.webhook.max_connections == 0 {
            return bad("webhook.max_connections", "must be at least 1");
        }
        if self.server.listen.port() != 0 && self.webhook.listen == Some(self.server.listen) {
            return bad("webhook.listen", "must differ from server.listen");
        }
        if let Some(o) = self
            .stomp
            .allowed_origins
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
        {
            return bad(
                "stomp.allowed_origins",
                &format!("{o:?} is not an origin such as \"https://tablets.example.com\""),
            );
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
        if self.amqp.retry_max_attempts == 0 {
            return bad(
                "amqp.retry_max_attempts",
                "must be at least 1 (it counts attempts, the first included)",
            );
        }
        if self.amqp.heartbeat.as_secs() > u64::from(u16::MAX) {
            return bad("amqp.heartbeat", "must be at most 65535 seconds (0: none)");
        }
        if self.amqp.link_timeout < Duration::from_millis(500) {
            return bad("amqp.link_timeout", "must be at least 500ms");
        }
        if self.database.timeout < Duration::from_millis(100) {
            return bad("database.timeout", "must be at least 100ms");
        }
        if self.amqp.unbind_grace > MAX_TTL {
            return bad("amqp.unbind_grace", "must be at most a day (\"24h\")");
        }
        if self.amqp.routing == Routing::Store && self.amqp.routed_exchange() == self.amqp.exchange
        {
            return bad(
                "amqp.routed_exchange",
                "must differ from amqp.exchange (one is fanout, the other direct)",
            );
        }
        if self.amqp.prefetch == 0 {
            return bad("amqp.prefetch", "must be at least 1");
        }
        let nodes = self.amqp.nodes();
        if nodes.is_empty() {
            return bad("amqp.url", "names no broker");
        }
        for (i, node) in nodes.iter().enumerate() {
            match url::Url::parse(node) {
                Ok(u) if matches!(u.scheme(), "amqp" | "amqps") && u.host_str().is_some() => {}
                _ => {
                    return bad(
                        "amqp.url",
                        &format!(
                            "node {} of {} is not an amqp:// or amqps:// URL with a host (a list separates URLs with commas; write a comma in a password as %2C)",
                            i + 1,
                            nodes.len()
                        ),
                    )
                }
            }
        }
        let tls = &self.amqp.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return bad(
                "amqp.tls.cert_file",
                "amqp.tls.cert_file and amqp.tls.key_file go together: set both or neither",
            );
        }
        if tls.server_name.as_deref().is_some_and(|n| {
            n.is_empty() || rustls_connector::rustls::pki_types::ServerName::try_from(n).is_err()
        }) {
            return bad("amqp.tls.server_name", "is not a host name or IP address");
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
        let from_env = e
            .metadata
            .as_ref()
            .is_some_and(|m| m.name.contains("environment"));
        let line = match &e.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                // The path ends with the unknown key itself.
                let mut path = e.path.clone();
                if path.last() != Some(field) {
                    path.push(field.clone());
                }
                let mut line = format!("unknown key {}", path.join("."));
                if from_env {
                    line.push_str(&format!(
                        " (from the variable BIZCALL_{})",
                        path.join("__").to_uppercase()
                    ));
                }
                if let Some(near) = closest(field, expected) {
                    line.push_str(&format!("; did you mean {near}?"));
                } else if !expected.is_empty() {
                    line.push_str(&format!("; the keys here are {}", expected.join(", ")));
                }
                line
            }
            kind => {
                let mut line = if e.path.is_empty() {
                    kind.to_string()
                } else {
                    format!("{}: {kind}", e.path.join("."))
                };
                if from_env && !e.path.is_empty() {
                    line.push_str(&format!(
                        " (from the variable BIZCALL_{})",
                        e.path.join("__").to_uppercase()
                    ));
                }
                line
            }
        };
        lines.push(line);
    }
    lines.join("; ")
}

/// The key of `known` nearest to the mistyped `key`, if one is near
/// enough to be what was meant (at most two edits, or a third of it).
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let above = row[j + 1];
                row[j + 1] = (above + 1)
                    .min(row[j] + 1)
                    .min(diagonal + usize::from(ca != *cb));
                diagonal = above;
            }
        }
        row[b.len()]
    };
    known
        .iter()
        .map(|k| (distance(key, k), *k))
        .filter(|(d, _)| *d <= 2.max(key.chars().count() / 3))
        .min()
        .map(|(_, k)| k)
}

/// Durations as human strings: "30s", "500ms", "2m".
pub mod duration_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|_| {
            serde::de::Error::custom(format!(
                "expected a duration such as \"30s\" or \"500ms\", got {text:?}"
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
        assert!(c.stomp.allowed_origins.is_empty());
        assert_eq!(c.compat.sockjs_path, "/ws/v1/offline-store-pad");
        assert!(!c.compat.anonymous);
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
    fn a_mistyped_key_names_the_variable_and_the_key_meant() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BIZCALL_SERVER__LISTN", "127.0.0.1:9000");
            let err = Config::load(None).unwrap_err().to_string();
            assert_eq!(
                err,
                "configuration: unknown key server.listn (from the variable BIZCALL_SERVER__LISTN); did you mean listen?"
            );
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("bizcall.toml", "[bus]\nmessage_tl = \"5s\"\n")?;
            let err = Config::load(None).unwrap_err().to_string();
            assert_eq!(
                err,
                "configuration: unknown key bus.message_tl; did you mean message_ttl?"
            );
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("BIZCALL_BUS__ZZZZZZZ", "1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("the keys here are kind, message_ttl, relay_interval"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_bad_duration_is_one_plain_line() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BIZCALL_BUS__MESSAGE_TTL", "soon");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(!err.contains("expected number"), "parser noise: {err}");
            assert!(!err.contains('`'), "backticks: {err}");
            assert!(err.contains("BIZCALL_BUS__MESSAGE_TTL"), "{err}");
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

    /// The Debian package's `/etc/bizcall/bizcall.toml`.
    const PACKAGED: &str = include_str!("../deploy/debian/bizcall.toml");

    /// `# key = value` lines uncommented: the file as if every default were set.
    fn uncommented(text: &str) -> String {
        text.lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if !rest.ends_with(UNSET)
                        && rest.split_once(" = ").is_some_and(|(k, _)| {
                            k.bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                        }) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How the packaged file marks an example of a key that is unset by
    /// default (TOML has no "none" to show).
    const UNSET: &str = "# unset by default";

    /// Dotted paths of the keys shown as unset-by-default examples.
    fn unset_keys(text: &str) -> Vec<String> {
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
            } else if let Some(rest) = line.strip_prefix("# ") {
                if rest.ends_with(UNSET) {
                    if let Some((key, _)) = rest.split_once(" = ") {
                        out.push(format!("{section}.{key}"));
                    }
                }
            }
        }
        out
    }

    /// Every key's dotted path in a configuration tree.
    fn key_paths(value: &figment::value::Value, prefix: &str, out: &mut Vec<String>) {
        if let figment::value::Value::Dict(_, dict) = value {
            for (k, v) in dict {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if matches!(v, figment::value::Value::Dict(..)) {
                    key_paths(v, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }

    /// The file's configuration as JSON, with the package's database path
    /// put back to the built-in default so the rest compares to the defaults.
    fn as_defaults_json(text: &str) -> serde_json::Value {
        let c: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .unwrap_or_else(|e| panic!("the packaged config does not load: {}", describe(e)));
        c.validate().expect("the packaged config is valid");
        assert_eq!(c.database.url, "sqlite:///var/lib/bizcall/bizcall.db");
        let mut json = serde_json::to_value(&c).unwrap();
        json["database"]["url"] = Config::default().database.url.into();
        json
    }

    #[test]
    fn packaged_config_is_the_defaults_but_for_the_database_path() {
        let defaults = serde_json::to_value(Config::default()).unwrap();
        assert_eq!(as_defaults_json(PACKAGED), defaults);
        // Uncommenting every key changes nothing: each shows its default.
        assert_eq!(as_defaults_json(&uncommented(PACKAGED)), defaults);
    }

    #[test]
    fn packaged_config_lists_every_key() {
        let mut expected = Vec::new();
        let defaults: figment::value::Value =
            Figment::from(Serialized::defaults(Config::default()))
                .extract()
                .unwrap();
        key_paths(&defaults, "", &mut expected);
        let mut listed = Vec::new();
        let file: figment::value::Value = Figment::from(Toml::string(&uncommented(PACKAGED)))
            .extract()
            .unwrap();
        key_paths(&file, "", &mut listed);
        listed.extend(unset_keys(PACKAGED));
        expected.sort();
        listed.sort();
        assert_eq!(
            listed, expected,
            "deploy/debian/bizcall.toml must show every configuration key, commented, with its default"
        );
    }

    #[test]
    fn the_pages_own_paths_are_taken() {
        for path in [
            "/tablet/main.js",
            "/tablet.js",
            "/admin",
            "/sw.js",
            "/api/x",
        ] {
            let mut c = Config::default();
            c.stomp.path = path.into();
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.contains("stomp.path: is one of bizcall's own paths"),
                "{path}: {err}"
            );
        }
    }

    #[test]
    fn anonymous_tablets_need_listed_origins() {
        let mut c = Config::default();
        c.compat.anonymous = true;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("compat.anonymous"), "{err}");
        assert!(err.contains("stomp.allowed_origins"), "{err}");
        c.stomp.allowed_origins = vec!["https://pad.example.com/".into()];
        assert!(c.validate().is_ok());
        assert!(c.stomp.origin_listed("https://PAD.example.com"));
        assert!(!c.stomp.origin_listed("https://pad.example.com.evil"));
        assert!(!c.stomp.origin_listed("null"));
        assert!(c.stomp.origin_allowed(None));
        assert!(!c.stomp.origin_allowed(Some("https://other.example")));
    }

    #[test]
    fn sockjs_path_is_checked() {
        let mut c = Config::default();
        for bad in ["ws/v1", "/ws/v1/", "/ws"] {
            c.compat.sockjs_path = bad.into();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("compat.sockjs_path"), "{bad}: {err}");
        }
        c.compat.sockjs_path = String::new();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn only_sectioned_variables_are_configuration() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "BIZCALL_TEST_PG",
                "postgres://postgres@127.0.0.1:5432/postgres",
            );
            jail.set_env("BIZCALL_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2f");
            jail.set_env("BIZCALL_DATABASE__URL", "sqlite://other.db");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.database.url, "sqlite://other.db");
            Ok(())
        });
        // A sectioned variable naming no key is still a typo worth a stop.
        figment::Jail::expect_with(|jail| {
            jail.set_env("BIZCALL_DATABASE__URLL", "sqlite://other.db");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("urll"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn durations_are_bounded_and_converted_once() {
        let c = Config::default();
        assert_eq!(c.bus.ttl(), chrono::Duration::seconds(30));
        figment::Jail::expect_with(|jail| {
            jail.set_env("BIZCALL_BUS__MESSAGE_TTL", "25h");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("bus.message_ttl") && err.contains("a day"),
                "{err}"
            );
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("BIZCALL_BUS__MESSAGE_TTL", "24h");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.bus.ttl(), chrono::Duration::hours(24));
            Ok(())
        });
        // Past chrono's range, a hand-built value saturates.
        assert_eq!(crate::call::to_chrono(Duration::MAX), chrono::Duration::MAX);
    }

    #[test]
    fn retry_max_attempts_counts_attempts() {
        assert_eq!(Config::default().amqp.retry_max_attempts, 2);
        figment::Jail::expect_with(|jail| {
            jail.set_env("BIZCALL_AMQP__RETRY_MAX_ATTEMPTS", "0");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("amqp.retry_max_attempts"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn pool_size_defaults_and_bounds() {
        assert_eq!(Config::default().database.pool_size, 16);
        for (given, ok) in [
            ("0", false),
            ("1", false),
            ("2", true),
            ("-3", false),
            ("x", false),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.set_env("BIZCALL_DATABASE__POOL_SIZE", given);
                match Config::load(None) {
                    Ok(c) => {
                        assert!(ok, "{given} accepted");
                        assert_eq!(c.database.pool_size.to_string(), given);
                    }
                    Err(e) => {
                        assert!(!ok, "{given} refused: {e}");
                        assert!(e.to_string().contains("database.pool_size"), "{e}");
                    }
                }
                Ok(())
            });
        }
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/b.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/b.toml"), "{err}");
    }

    #[test]
    fn amqp_url_takes_a_list_of_nodes() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "bizcall.toml",
                "[amqp]\nurl = [\"amqps://u:p@mq1:5671/%2f\", \"amqps://u:p@mq2:5671/%2f\"]\n",
            )?;
            let c = Config::load(None).unwrap();
            assert_eq!(
                c.amqp.nodes(),
                ["amqps://u:p@mq1:5671/%2f", "amqps://u:p@mq2:5671/%2f"]
            );
            jail.set_env(
                "BIZCALL_AMQP__URL",
                " amqp://a:1/%2f,amqp://b:2/%2f ,, amqp://a:1/%2f",
            );
            let c = Config::load(None).unwrap();
            // Written order kept; a node listed twice is simply tried twice.
            assert_eq!(
                c.amqp.nodes(),
                ["amqp://a:1/%2f", "amqp://b:2/%2f", "amqp://a:1/%2f"]
            );
            Ok(())
        });
        let mut c = Config::default();
        for bad in [
            "",
            " , ",
            "http://mq:5672",
            "amqp://",
            "javascript:alert(1)",
            "amqp://u:p@mq:5672/%2f,mq2",
        ] {
            c.amqp.url = bad.into();
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.starts_with("configuration: amqp.url: "),
                "{bad:?}: {err}"
            );
            assert!(!err.contains(":p@"), "no credentials echoed: {err}");
        }
        c.amqp.url = format!("amqp://u:p@{}:5672/%2f", "m".repeat(10_000));
        assert!(c.validate().is_ok(), "a long host is the broker's business");
    }

    #[test]
    fn amqp_tls_settings_are_checked() {
        let mut c = Config::default();
        c.amqp.tls.cert_file = Some("/etc/bizcall/client.pem".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("amqp.tls.key_file"), "{err}");
        c.amqp.tls.key_file = Some("/etc/bizcall/client.key".into());
        assert!(c.validate().is_ok());
        for bad in ["", "not a name", "mq..example", "mq\u{0}x"] {
            c.amqp.tls.server_name = Some(bad.into());
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.starts_with("configuration: amqp.tls.server_name: "),
                "{bad:?}: {err}"
            );
        }
        for good in ["rabbit.internal.example", "10.0.0.7", "::1"] {
            c.amqp.tls.server_name = Some(good.into());
            assert!(c.validate().is_ok(), "{good}");
        }
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "bizcall.toml",
                "[amqp.tls]\nca_file = \"/x/ca.pem\"\nserver_name = \"mq\"\nsurprise = 1\n",
            )?;
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("surprise"), "unknown keys are errors: {err}");
            Ok(())
        });
    }
}
