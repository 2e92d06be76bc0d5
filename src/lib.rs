//! bizcall turns a telephony provider's call-detail record into a popup on
//! a store's tablet, across several instances.
//!
//! # Layout
//!
//! - [`config`]: the TOML + environment configuration and its defaults.
//! - [`address`]: client addresses as the per-address caps group them.
//! - [`cdr`]: the provider's call record: parsing, validation, status.
//! - [`call`]: the call event that flows to tablets (JSON shape, expiry).
//! - [`intake`]: the CDR use case: store, publish, outcome.
//! - [`db`]: storage on SQLite or PostgreSQL, with migrations.
//! - [`auth`]: the bearer scheme and the guard against guessing tokens.
//! - [`token`]: tablet tokens, hashed at rest, compared in constant time.
//! - [`bus`]: the `Bus` contract, an in-process bus and RabbitMQ.
//! - [`delivery`]: the bus's event handler: dedupe, expiry, ACK waiters,
//!   catch-up after a bus gap, and the ACK use case.
//! - [`hub`]: the tablets connected to this instance, by store, and each
//!   tablet's bounded outgoing queue.
//! - [`prepared`]: an event as tablets receive it, serialised once.
//! - [`subscription`]: a tablet's STOMP subscriptions and unacknowledged
//!   messages.
//! - [`presence_book`]: tablets here per (store, token), changes to write.
//! - [`presence`]: tablets online across the cluster, heart-beaten per instance.
//! - [`relay`]: carries call changes from the database while the bus cannot.
//! - [`trail`]: each call's delivery trail, one batched row per instance.
//! - [`stomp`]: the STOMP codec, one tablet's session, and the connection
//!   loop that runs it over any transport.
//! - [`sockjs`]: SockJS transports for the Spring service's tablets.
//! - [`http`]: routes: webhook, API, tablet page, health and metrics.
//! - [`app`]: what request handlers share, below the routes.
//! - [`server`]: wiring, background jobs and graceful shutdown.
//! - [`store_import`]: `bizcall store import`, the old service's stores from CSV.
//! - [`simulate`]: sends a provider-shaped CDR to a running server.
//! - [`metrics`]: every metric's name and meaning.
//! - [`log_budget`]: a rate limit for log lines strangers can cause.
//! - [`text`]: what free text people type may hold.
//! - [`slug`]: the one rule for a store's slug.

pub mod address;
pub mod app;
pub mod auth;
pub mod bus;
pub mod call;
pub mod cdr;
pub mod clock;
pub mod config;
pub mod db;
pub mod delivery;
pub mod fleet_jobs;
pub mod http;
pub mod hub;
pub mod intake;
pub mod log_budget;
pub mod metrics;
pub mod prepared;
pub mod presence;
pub mod presence_book;
pub mod relay;
pub mod server;
pub mod simulate;
pub mod slug;
pub mod sockjs;
pub mod stomp;
pub mod store_import;
pub mod subscription;
pub mod text;
pub mod token;
pub mod trail;
