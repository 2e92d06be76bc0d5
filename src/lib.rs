//! bizcall turns a telephony provider's call-detail record into a popup on
//! a store's tablet, across several instances.
//!
//! # Layout
//!
//! - [`config`]: the TOML + environment configuration and its defaults.
//! - [`cdr`]: the provider's call record: parsing, validation, status.
//! - [`call`]: the call event that flows to tablets (JSON shape, expiry).
//! - [`db`]: storage on SQLite or PostgreSQL, with migrations.
//! - [`token`]: tablet tokens, hashed at rest, compared in constant time.
//! - [`bus`]: the `Bus` contract, an in-process bus and RabbitMQ.
//! - [`hub`]: the tablets connected to this instance, by store.
//! - [`http`]: routes: webhook, API, tablet page, health and metrics.
//! - [`server`]: wiring, background jobs and graceful shutdown.
//! - [`simulate`]: sends a provider-shaped CDR to a running server.
//! - [`metrics`]: every metric's name and meaning.

pub mod bus;
pub mod call;
pub mod cdr;
pub mod config;
pub mod db;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod simulate;
pub mod stomp;
pub mod token;
