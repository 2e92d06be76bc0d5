//! What request handlers share: the parts of a running instance, cheap to
//! clone. Below the routes, above the components it holds.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::LoginGuard;
use crate::bus::SharedBus;
use crate::config::Config;
use crate::db::Db;
use crate::hub::Hub;

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub db: Db,
    pub bus: SharedBus,
    pub hub: Arc<Hub>,
    /// The bus's event handler: dedupe, ACK waiters, catch-up, ACKs.
    pub delivery: Arc<crate::delivery::Delivery>,
    /// Failed sign-ins per client address (tablet API, admin, STOMP).
    pub logins: Arc<LoginGuard>,
    pub metrics: PrometheusHandle,
    /// Cancelled when the instance starts to stop.
    pub shutdown: CancellationToken,
    /// This instance as the cluster's presence and trails name it.
    pub identity: Arc<crate::presence::Identity>,
    /// The CDR use case: store, publish, mark, trail.
    pub intake: crate::intake::Intake,
}
