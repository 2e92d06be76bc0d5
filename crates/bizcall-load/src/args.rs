//! Command-line arguments of each scenario.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

use crate::*;

#[derive(Args, Clone)]
pub(crate) struct Common {
    /// Calls per second.
    #[arg(long, default_value_t = 1000)]
    pub(crate) rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20)]
    pub(crate) duration: u64,
    /// Directory for `<name>.json`.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Base URL(s) CDRs are posted to (instance A…).
    #[arg(long = "post-to", required_unless_present = "publish_to")]
    pub(crate) post_to: Vec<String>,
    /// Instead of posting CDRs, publish each call event (with confirms) to
    /// this exchange, the one the instances publish to (`amqp.exchange` with
    /// fanout routing, `amqp.routed_exchange` with store routing), with the
    /// store as routing key: the bus leg timed at the tablet, publish →
    /// receipt, as the `webstomp` scenario times Web-STOMP. `/ws` tablets
    /// only.
    #[arg(long = "publish-to", conflicts_with = "post_to")]
    pub(crate) publish_to: Option<String>,
    /// The broker `--publish-to` publishes on.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub(crate) amqp: String,
    /// URL(s) tablets connect to (instance B…): `ws://…/ws` for `/ws`, the
    /// SockJS base (`http://…/ws/v1/offline-store-pad`) for SockJS.
    #[arg(long = "tablets-at", required = true)]
    pub(crate) tablets_at: Vec<String>,
    /// How tablets connect: `ws` (STOMP over WebSocket on `/ws`),
    /// `sockjs-websocket` or `sockjs-xhr-streaming`.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub(crate) transport: Transport,
    /// The instances' database, to register stores and tokens.
    #[arg(long)]
    pub(crate) db: String,
    #[arg(long, default_value_t = 1000)]
    pub(crate) tablets: usize,
    #[arg(long, default_value_t = 100)]
    pub(crate) stores: usize,
    /// Pid of the tablet instance, for memory and CPU from /proc.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// Source addresses for tablet sockets (127.0.0.x), used in turn.
    #[arg(long = "source", value_delimiter = ',')]
    pub(crate) sources: Vec<IpAddr>,
    /// Tablets connecting at once.
    #[arg(long, default_value_t = 200)]
    pub(crate) connect_concurrency: usize,
    /// Processes holding the tablets (this one and N−1 children), each with
    /// its own descriptor limit: for more tablets than one process can open.
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: usize,
    /// Name of the results (`<name>.json`).
    #[arg(long, default_value = "bizcall")]
    pub(crate) name: String,
    /// Processes whose CPU use is reported over the sending phase
    /// (`name=PID` or `name=comm:COMMAND`, repeatable).
    #[arg(long = "cpu-of")]
    pub(crate) cpu_of: Vec<Watched>,
    /// Instances whose `/metrics` is read before and after sending
    /// (`name=http://host:port`, repeatable): events their queue delivered
    /// per second, and the bus leg (publish → MESSAGE written).
    #[arg(long = "metrics-of")]
    pub(crate) metrics_of: Vec<Scraped>,
    /// Each store's tablets all on one instance of `--tablets-at` (store i
    /// on instance i mod n), so instances share no store; otherwise tablets
    /// go to the instances in turn.
    #[arg(long)]
    pub(crate) tablets_by_store: bool,
    /// A shell command started as the sending begins and waited for before
    /// the report (e.g. `perf record -p PID -- sleep 20`), so what it
    /// records is the sending phase alone.
    #[arg(long)]
    pub(crate) on_send: Option<String>,
}

#[derive(Args)]
pub(crate) struct AmqpArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub(crate) amqp: String,
}

#[derive(Args)]
pub(crate) struct WebstompArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub(crate) amqp: String,
    #[arg(long, default_value = "ws://127.0.0.1:15674/ws")]
    pub(crate) url: String,
    #[arg(long, default_value_t = 1000)]
    pub(crate) tablets: usize,
    /// Exchanges (one per "store"); each call goes to one.
    #[arg(long, default_value_t = 100)]
    pub(crate) stores: usize,
    /// Pid of the broker (beam.smp), for memory from /proc.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    #[arg(long = "source", value_delimiter = ',')]
    pub(crate) sources: Vec<IpAddr>,
}

#[derive(Args)]
pub(crate) struct IntakeArgs {
    #[arg(long = "post-to")]
    pub(crate) post_to: String,
    #[arg(long)]
    pub(crate) db: String,
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}
