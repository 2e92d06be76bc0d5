//! The in-process bus: one instance, no broker. Events go straight to this
//! instance's handler, in order, through a bounded channel.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError, BusState, EventHandler};
use crate::call::BusEvent;
use crate::metrics as m;

/// Events waiting for the handler before publishers are told to wait.
const CAPACITY: usize = 4096;

pub struct LocalBus {
    tx: mpsc::Sender<BusEvent>,
    stop: CancellationToken,
}

impl LocalBus {
    pub fn start(handler: Arc<dyn EventHandler>) -> Self {
        let (tx, mut rx) = mpsc::channel::<BusEvent>(CAPACITY);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stopped.cancelled() => break,
                    ev = rx.recv() => match ev { Some(ev) => ev, None => break },
                };
                m::consumed();
                if !event.is_live(crate::clock::now()) {
                    m::expired_before_delivery();
                    continue;
                }
                match event {
                    BusEvent::Call(event) => {
                        if let Err(e) = handler.handle(event).await {
                            tracing::warn!(error = %e, "local bus handler failed");
                        }
                    }
                    BusEvent::Handled(event) => handler.handled(event).await,
                }
            }
        });
        LocalBus { tx, stop }
    }
}

impl LocalBus {
    async fn send(&self, event: BusEvent) -> Result<(), BusError> {
        self.tx.send(event).await.map_err(|_| BusError::Stopped)?;
        m::published();
        Ok(())
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, event: &BusEvent) -> Result<(), BusError> {
        self.send(event.clone()).await
    }

    fn state(&self) -> BusState {
        if self.tx.is_closed() {
            BusState::Reconnecting
        } else {
            BusState::Up
        }
    }

    async fn shutdown(&self) {
        self.stop.cancel();
    }
}
