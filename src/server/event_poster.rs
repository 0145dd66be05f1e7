//! A call's events on their way out: to the agents' screens at once (the in-memory hub), and
//! into the webhook outbox in the order they happened, written on the blocking pool (an
//! SQLite write never runs on the runtime's threads, and a slow disk never stalls the call's
//! media). Each write's result (the event id, and for a watched event the receiver that
//! completes once the webhook confirmed it) comes back to the call task as a [`Posted`].

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::handover::hub::HandoverHub;
use crate::handover::outbox::DelivererHandle;

/// One event for the outbox.
struct Post {
    kind: &'static str,
    data: serde_json::Value,
    watched: bool,
}

/// What became of an event in the outbox.
#[derive(Debug)]
pub struct Posted {
    pub kind: &'static str,
    /// The event id and, when watched, the confirmation; or why it could not be queued.
    pub result: Result<(String, Option<oneshot::Receiver<()>>), String>,
}

/// Posts one call's events.
pub struct EventPoster {
    call_id: String,
    hub: Arc<HandoverHub>,
    outbox: Option<mpsc::UnboundedSender<Post>>,
}

impl EventPoster {
    /// A poster for `call_id`; with a deliverer, a task writes the outbox and reports each
    /// write on `results` (the task ends once the poster is dropped and its queue is written).
    pub fn start(
        call_id: &str,
        hub: Arc<HandoverHub>,
        deliverer: Option<Arc<DelivererHandle>>,
        results: mpsc::UnboundedSender<Posted>,
    ) -> EventPoster {
        let outbox = deliverer.map(|d| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_outbox(call_id.to_string(), d, rx, results).in_current_span());
            tx
        });
        EventPoster {
            call_id: call_id.to_string(),
            hub,
            outbox,
        }
    }

    /// Whether events go to a webhook (and can be watched).
    pub fn has_webhook(&self) -> bool {
        self.outbox.is_some()
    }

    /// Publishes an event now and queues it for the webhook; `watched`: report its delivery.
    pub fn post(&self, kind: &'static str, data: serde_json::Value, watched: bool) {
        self.hub.publish(kind, &self.call_id, &data);
        if let Some(tx) = &self.outbox {
            let post = Post {
                kind,
                data,
                watched,
            };
            if tx.send(post).is_err() {
                tracing::error!(event = kind, "webhook writer gone; event not queued");
            }
        }
    }
}

async fn write_outbox(
    call_id: String,
    deliverer: Arc<DelivererHandle>,
    mut posts: mpsc::UnboundedReceiver<Post>,
    results: mpsc::UnboundedSender<Posted>,
) {
    while let Some(post) = posts.recv().await {
        let (d, id, kind) = (Arc::clone(&deliverer), call_id.clone(), post.kind);
        let written = tokio::task::spawn_blocking(move || {
            if post.watched {
                d.enqueue_watched(&id, kind, post.data)
                    .map(|(event, rx)| (event, Some(rx)))
            } else {
                d.enqueue(&id, kind, post.data).map(|event| (event, None))
            }
        })
        .await;
        let result = match written {
            Ok(Ok(queued)) => {
                tracing::info!(event = kind, event_id = %queued.0, "webhook event queued");
                Ok(queued)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("outbox writer: {e}")),
        };
        if let Err(e) = &result {
            tracing::error!(event = kind, error = %e, "webhook event could not be queued");
        }
        // The call may be finished and gone; the event is in the outbox all the same.
        let _ = results.send(Posted { kind, result });
    }
}
