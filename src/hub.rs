//! The tablets connected to this instance, by store.

use std::sync::Arc;

use async_trait::async_trait;

use crate::bus::{EventHandler, HandleError, Handled};
use crate::call::CallEvent;
use crate::config::Config;
use crate::db::Db;

pub struct Hub {
    #[allow(dead_code)]
    config: Arc<Config>,
    #[allow(dead_code)]
    db: Db,
    /// Every event this instance receives, for observers (tests, tools).
    watchers: tokio::sync::broadcast::Sender<CallEvent>,
}

impl Hub {
    pub fn new(config: Arc<Config>, db: Db) -> Self {
        let (watchers, _) = tokio::sync::broadcast::channel(1024);
        Hub {
            config,
            db,
            watchers,
        }
    }

    /// A stream of every event this instance receives from the bus.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<CallEvent> {
        self.watchers.subscribe()
    }

    pub async fn close_all(&self, _reason: &str) {}
}

#[async_trait]
impl EventHandler for Hub {
    async fn handle(&self, event: CallEvent) -> Result<Handled, HandleError> {
        tracing::debug!(call = %event.call_id, store = %event.store, "event received");
        let _ = self.watchers.send(event);
        Ok(Handled::Done)
    }
}
