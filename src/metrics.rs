//! Prometheus metrics: names live here, so every counter is documented once.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder once and returns the handle `/metrics` renders.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ],
                )
                .and_then(|b| {
                    // Finer: the bus leg is a few milliseconds.
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(BUS_LEG.into()),
                        &BUS_LEG_BUCKETS,
                    )
                })
                .and_then(|b| b.install_recorder())
                .unwrap_or_else(|_| {
                    // Another recorder is installed (tests in one process):
                    // render an empty one rather than fail.
                    PrometheusBuilder::new().build_recorder().handle()
                });
            describe();
            register();
            let _ = HOT.set(Hot {
                popups_sent: counter!("bizcall_popups_sent_total"),
                webhook_to_send: histogram!("bizcall_webhook_to_send_seconds"),
                bus_leg: histogram!(BUS_LEG),
            });
            handle
        })
        .clone()
}

/// From a bus message's publish (microseconds, in its AMQP header) to its
/// MESSAGE frame written for a tablet.
pub const BUS_LEG: &str = "bizcall_bus_leg_seconds";
const BUS_LEG_BUCKETS: [f64; 24] = [
    0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.0008, 0.001, 0.0012, 0.0015, 0.002, 0.0025,
    0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0,
];

fn describe() {
    describe_counter!("bizcall_cdr_received_total", "CDR callbacks by result");
    describe_counter!("bizcall_calls_total", "calls stored or updated, by status");
    describe_counter!(
        "bizcall_calls_unmatched_total",
        "CDRs that matched no store"
    );
    describe_counter!(
        "bizcall_events_published_total",
        "call events handed to the bus"
    );
    describe_counter!(
        "bizcall_events_confirmed_total",
        "call events confirmed by the broker"
    );
    describe_counter!(
        "bizcall_publish_failures_total",
        "publishes that failed or timed out"
    );
    describe_counter!(
        "bizcall_events_consumed_total",
        "call events received from the bus"
    );
    describe_counter!("bizcall_events_acked_total", "bus messages acknowledged");
    describe_counter!("bizcall_events_rejected_total", "bus messages rejected");
    describe_counter!("bizcall_events_retried_total", "handler retries");
    describe_counter!(
        "bizcall_events_expired_total",
        "events expired before delivery"
    );
    describe_counter!("bizcall_bus_reconnects_total", "broker reconnections");
    describe_counter!(
        "bizcall_bus_link_silent_total",
        "broker links found silent and replaced, by cause (canary, confirm)"
    );
    describe_counter!(
        "bizcall_relayed_total",
        "call changes carried from the database because the bus had not brought them"
    );
    describe_counter!(
        "bizcall_database_timeouts_total",
        "CDRs answered 503 because the database did not answer within database.timeout"
    );
    describe_gauge!("bizcall_bus_connected", "1 while the broker link is up");
    describe_gauge!(
        "bizcall_fleet_jobs_held",
        "1 while this instance holds the lease on the fleet jobs (retention, trail prune)"
    );
    describe_counter!(
        "bizcall_fleet_job_runs_total",
        "runs of the fleet jobs (retention, trail prune) on this instance"
    );
    describe_counter!(
        "bizcall_database_disk_full_total",
        "CDRs answered 503 because the database's disk was full"
    );
    describe_gauge!(
        "bizcall_runtime_tasks",
        "tasks alive in this instance's runtime (one per connection, plus a few)"
    );
    describe_gauge!(
        "bizcall_clock_offset_seconds",
        "the database's clock minus this instance's: event times follow the database's"
    );
    describe_gauge!(
        "bizcall_bus_node",
        "1 for the RabbitMQ node (amqp://host:port) the bus is connected to, 0 for the other nodes of amqp.url"
    );
    describe_gauge!(
        "bizcall_tablets_connected",
        "tablets connected to this instance, by auth (token or anonymous)"
    );
    describe_gauge!(
        "bizcall_stores_with_tablets",
        "stores with a tablet on this instance"
    );
    describe_gauge!(
        "bizcall_sockjs_sessions",
        "SockJS xhr/xhr_streaming sessions held by this instance"
    );
    describe_counter!("bizcall_popups_sent_total", "popups sent to tablets");
    describe_counter!(
        "bizcall_popups_acked_total",
        "popups acknowledged by tablets"
    );
    describe_counter!(
        "bizcall_popups_expired_total",
        "popups dropped because they expired before sending"
    );
    describe_counter!(
        "bizcall_slow_consumer_disconnects_total",
        "tablets closed for falling behind"
    );
    describe_histogram!(
        "bizcall_webhook_to_send_seconds",
        "time from publish to popup sent"
    );
    describe_histogram!(
        "bizcall_bus_transit_seconds",
        "time from publish to the event's arrival from the bus"
    );
    describe_histogram!(
        BUS_LEG,
        "time from the bus message's publish (its microsecond header) to the MESSAGE written (RabbitMQ bus)"
    );
    describe_counter!("bizcall_calls_deleted_total", "calls deleted by retention");
    describe_counter!(
        "bizcall_panics_total",
        "panics caught in a connection or request task (a bug; each ended only its own task)"
    );
    describe_counter!(
        "bizcall_catch_up_changes_total",
        "changes replayed from the database after a bus gap"
    );
    describe_counter!(
        "bizcall_catch_up_cut_total",
        "changes inside their TTL left out of a catch-up (over its limit)"
    );
    describe_counter!(
        "bizcall_auth_failures_total",
        "failed or refused tablet and admin sign-ins, by surface (stomp, api, admin)"
    );
    describe_gauge!(
        "bizcall_bus_bound_stores",
        "stores this instance's queue is bound to (amqp.routing = \"store\")"
    );
    describe_counter!(
        "bizcall_bus_bindings_total",
        "store bindings made (bind) and removed (unbind), amqp.routing = \"store\""
    );
    describe_gauge!(
        "bizcall_connections_open",
        "open TCP connections, by listener (main or webhook)"
    );
    describe_counter!(
        "bizcall_connections_refused_total",
        "connections refused at accept, by reason (cap or address)"
    );
    describe_counter!(
        "bizcall_connections_timed_out_total",
        "HTTP connections closed by the header or idle timeout"
    );
}

/// Every counter and gauge at zero from the start, so that `/metrics` shows
/// them all (with their HELP) before the first call. Labelled ones get each
/// label value the code uses.
fn register() {
    for result in [
        "stored",
        "repeat",
        "conflict",
        "bad_request",
        "unauthorized",
        "forbidden",
        "too_large",
        "unsupported_media_type",
        "unavailable",
    ] {
        counter!("bizcall_cdr_received_total", "result" => result).increment(0);
    }
    for status in crate::call::CallStatus::ALL {
        counter!("bizcall_calls_total", "status" => status.as_str()).increment(0);
    }
    for surface in ["stomp", "api", "admin"] {
        counter!("bizcall_auth_failures_total", "surface" => surface).increment(0);
    }
    for reason in [
        "cap",
        "address",
        "sockjs_sessions",
        "sockjs_sessions_per_address",
        "tablets_per_token",
        "tablets_per_address",
    ] {
        counter!("bizcall_connections_refused_total", "reason" => reason).increment(0);
    }
    for listener in ["main", "webhook"] {
        gauge!("bizcall_connections_open", "listener" => listener).set(0.0);
    }
    for reason in ["poison", "expired", "handler", "unacknowledged"] {
        counter!("bizcall_events_rejected_total", "reason" => reason).increment(0);
    }
    for name in [
        "bizcall_calls_unmatched_total",
        "bizcall_events_published_total",
        "bizcall_events_confirmed_total",
        "bizcall_publish_failures_total",
        "bizcall_events_consumed_total",
        "bizcall_events_acked_total",
        "bizcall_events_retried_total",
        "bizcall_events_expired_total",
        "bizcall_bus_reconnects_total",
        "bizcall_popups_sent_total",
        "bizcall_popups_acked_total",
        "bizcall_popups_expired_total",
        "bizcall_slow_consumer_disconnects_total",
        "bizcall_calls_deleted_total",
        "bizcall_catch_up_changes_total",
        "bizcall_catch_up_cut_total",
        "bizcall_connections_timed_out_total",
        "bizcall_panics_total",
        "bizcall_relayed_total",
        "bizcall_database_timeouts_total",
    ] {
        counter!(name).increment(0);
    }
    for cause in ["canary", "confirm"] {
        counter!("bizcall_bus_link_silent_total", "cause" => cause).increment(0);
    }
    for op in ["bind", "unbind"] {
        counter!("bizcall_bus_bindings_total", "op" => op).increment(0);
    }
    bound_stores(0);
    tablets(0, 0, 0);
    sockjs_sessions(0);
}

pub fn panicked() {
    counter!("bizcall_panics_total").increment(1);
}
pub fn cdr_received(result: &'static str) {
    counter!("bizcall_cdr_received_total", "result" => result).increment(1);
}
pub fn call_stored(status: &'static str) {
    counter!("bizcall_calls_total", "status" => status).increment(1);
}
pub fn call_unmatched() {
    counter!("bizcall_calls_unmatched_total").increment(1);
}
pub fn published() {
    counter!("bizcall_events_published_total").increment(1);
}
pub fn confirmed() {
    counter!("bizcall_events_confirmed_total").increment(1);
}
pub fn publish_failed() {
    counter!("bizcall_publish_failures_total").increment(1);
}
pub fn consumed() {
    counter!("bizcall_events_consumed_total").increment(1);
}
pub fn acked() {
    counter!("bizcall_events_acked_total").increment(1);
}
pub fn rejected(reason: &'static str) {
    counter!("bizcall_events_rejected_total", "reason" => reason).increment(1);
}
pub fn retried() {
    counter!("bizcall_events_retried_total").increment(1);
}
pub fn expired_before_delivery() {
    counter!("bizcall_events_expired_total").increment(1);
}
/// A broker link found silent and replaced: `cause` is `canary` (no
/// canary came back) or `confirm` (a publish went unconfirmed).
pub fn link_silent(cause: &'static str) {
    counter!("bizcall_bus_link_silent_total", "cause" => cause).increment(1);
}
/// A call change the relay carried from the database because the bus had
/// not brought it.
pub fn relayed(n: u64) {
    counter!("bizcall_relayed_total").increment(n);
}
pub fn database_timeout() {
    counter!("bizcall_database_timeouts_total").increment(1);
}
pub fn fleet_jobs_held(held: bool) {
    gauge!("bizcall_fleet_jobs_held").set(if held { 1.0 } else { 0.0 });
}
pub fn fleet_job_ran() {
    counter!("bizcall_fleet_job_runs_total").increment(1);
}
pub fn disk_full() {
    counter!("bizcall_database_disk_full_total").increment(1);
}
pub fn clock_offset(seconds: f64) {
    gauge!("bizcall_clock_offset_seconds").set(seconds);
}
pub fn reconnected() {
    counter!("bizcall_bus_reconnects_total").increment(1);
}
/// 1 for the broker node the bus is connected to, 0 for the others.
pub fn bus_node(node: &str, current: bool) {
    gauge!("bizcall_bus_node", "node" => node.to_string()).set(if current { 1.0 } else { 0.0 });
}
pub fn bus_connected(up: bool) {
    gauge!("bizcall_bus_connected").set(if up { 1.0 } else { 0.0 });
}
/// Tablets connected here: with a token, and anonymous
/// (`compat.anonymous`), counted apart so an operator sees who still
/// needs a token.
/// Tasks alive in the runtime (read when `/metrics` is scraped).
pub fn runtime_tasks(n: usize) {
    gauge!("bizcall_runtime_tasks").set(n as f64);
}
pub fn tablets(with_token: usize, anonymous: usize, stores: usize) {
    gauge!("bizcall_tablets_connected", "auth" => "token").set(with_token as f64);
    gauge!("bizcall_tablets_connected", "auth" => "anonymous").set(anonymous as f64);
    gauge!("bizcall_stores_with_tablets").set(stores as f64);
}
/// SockJS HTTP-transport sessions held here.
pub fn sockjs_sessions(n: usize) {
    gauge!("bizcall_sockjs_sessions").set(n as f64);
}
/// The metrics written once per popup per tablet (tens of thousands a
/// second), held as handles: the macros look the key up in the registry
/// (a hash and a lock) on every use. Set by [`install`], once the
/// recorder exists (a handle taken before would write nowhere).
struct Hot {
    popups_sent: metrics::Counter,
    webhook_to_send: metrics::Histogram,
    bus_leg: metrics::Histogram,
}
static HOT: std::sync::OnceLock<Hot> = std::sync::OnceLock::new();

pub fn popup_sent(latency: Duration) {
    match HOT.get() {
        Some(hot) => {
            hot.popups_sent.increment(1);
            hot.webhook_to_send.record(latency.as_secs_f64());
        }
        None => {
            counter!("bizcall_popups_sent_total").increment(1);
            histogram!("bizcall_webhook_to_send_seconds").record(latency.as_secs_f64());
        }
    }
}
/// An event arrived from the bus `latency` after it was published.
pub fn bus_transit(latency: Duration) {
    histogram!("bizcall_bus_transit_seconds").record(latency.as_secs_f64());
}
pub fn popup_acked() {
    counter!("bizcall_popups_acked_total").increment(1);
}
pub fn popup_expired() {
    counter!("bizcall_popups_expired_total").increment(1);
}
pub fn slow_consumer() {
    counter!("bizcall_slow_consumer_disconnects_total").increment(1);
}
pub fn calls_deleted(n: u64) {
    counter!("bizcall_calls_deleted_total").increment(n);
}
pub fn auth_failure(surface: &'static str) {
    counter!("bizcall_auth_failures_total", "surface" => surface).increment(1);
}
pub fn caught_up(n: u64) {
    counter!("bizcall_catch_up_changes_total").increment(n);
}
pub fn catch_up_cut(n: u64) {
    counter!("bizcall_catch_up_cut_total").increment(n);
}
pub fn bus_leg(latency: Duration) {
    match HOT.get() {
        Some(hot) => hot.bus_leg.record(latency.as_secs_f64()),
        None => histogram!(BUS_LEG).record(latency.as_secs_f64()),
    }
}
pub fn bound_stores(n: usize) {
    gauge!("bizcall_bus_bound_stores").set(n as f64);
}
pub fn binding(op: &'static str) {
    counter!("bizcall_bus_bindings_total", "op" => op).increment(1);
}
pub fn connections_open(listener: &'static str, n: usize) {
    gauge!("bizcall_connections_open", "listener" => listener).set(n as f64);
}
pub fn connection_refused(reason: &'static str) {
    counter!("bizcall_connections_refused_total", "reason" => reason).increment(1);
}
pub fn connection_timed_out() {
    counter!("bizcall_connections_timed_out_total").increment(1);
}

#[cfg(test)]
mod tests {
    #[test]
    fn alerting_series_exist_before_their_first_event() {
        let text = super::install().render();
        for series in [
            "bizcall_cdr_received_total{result=\"unavailable\"}",
            "bizcall_calls_unmatched_total",
            "bizcall_events_expired_total",
            "bizcall_popups_expired_total",
            "bizcall_slow_consumer_disconnects_total",
            "bizcall_tablets_connected{auth=\"token\"}",
        ] {
            assert!(
                text.lines().any(|l| l
                    .strip_prefix(series)
                    .is_some_and(|rest| rest.starts_with(' '))),
                "{series} missing from:\n{text}"
            );
        }
    }
}
