//! Handing a call over to a person: what the agent is told (the context and its summary) and
//! how it reaches them (a durable, signed webhook outbox), before their phone even rings.

pub mod cluster;
pub mod context;
pub mod feedback;
pub mod hub;
pub mod outbox;
pub mod transfer;

use serde::{Deserialize, Serialize};

/// `[handover]` in the gateway configuration: where escalated calls go and who is told.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandoverConfig {
    /// `[handover.transfer]`: the agent extensions per team.
    pub transfer: transfer::TransferConfig,
    /// `[handover.webhook]`: the signed, durable event feed.
    pub webhook: outbox::WebhookConfig,
}

impl HandoverConfig {
    /// What is wrong with the settings, as `(field under handover, reason)`.
    pub fn problem(&self) -> Option<(String, String)> {
        if let Some((field, reason)) = self.transfer.problem() {
            return Some((format!("transfer.{field}"), reason));
        }
        self.webhook
            .problem()
            .map(|(field, reason)| (format!("webhook.{field}"), reason))
    }
}
