-- The webhook outbox shared by the gateways of a cluster (src/handover/outbox/postgres.rs).
-- The columns of the SQLite outbox, plus the claim: which gateway (node) holds the event for
-- delivery and until when (unix ms on the database's clock).
CREATE TABLE webhook_outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    call_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    delivered_ms BIGINT NULL,
    dead_ms BIGINT NULL,
    last_error TEXT NULL,
    claimed_by TEXT NULL,
    lease_until_ms BIGINT NULL
);
-- The pending events by call, in order: what `due` and `next_due_ms` look at.
CREATE INDEX webhook_outbox_pending_by_call ON webhook_outbox (call_id, id)
    WHERE delivered_ms IS NULL AND dead_ms IS NULL;
CREATE INDEX webhook_outbox_by_call ON webhook_outbox (call_id);
-- Dead letters are listed by the admin API, newest first.
CREATE INDEX webhook_outbox_dead ON webhook_outbox (dead_ms) WHERE dead_ms IS NOT NULL;
