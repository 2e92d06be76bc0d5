//! RabbitMQ bus (filled in by the fanout work).

use std::sync::Arc;

use crate::bus::{EventHandler, SharedBus};
use crate::config::Config;

pub struct AmqpBus;

impl AmqpBus {
    pub async fn start(
        _config: &Config,
        _handler: Arc<dyn EventHandler>,
    ) -> anyhow::Result<SharedBus> {
        anyhow::bail!("bus.kind = \"amqp\" is not available yet")
    }
}
