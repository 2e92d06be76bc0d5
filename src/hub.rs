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
}

impl Hub {
    pub fn new(config: Arc<Config>, db: Db) -> Self {
        Hub { config, db }
    }

    pub async fn close_all(&self, _reason: &str) {}
}

#[async_trait]
impl EventHandler for Hub {
    async fn handle(&self, event: CallEvent) -> Result<Handled, HandleError> {
        tracing::debug!(call = %event.call_id, store = %event.store, "event received");
        Ok(Handled::Done)
    }
}
