-- The call history on the shared store (see src/history.rs): one row per finished call,
-- keyed by the gateway's own call id, and one row per caller turn. The same columns as the
-- SQLite schema (version 3), with `node`: the gateway that handled the call.
CREATE TABLE calls (
    id TEXT PRIMARY KEY NOT NULL,
    call_id TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    caller TEXT NOT NULL,
    flow TEXT NULL,
    outcome TEXT NULL,
    escalated BOOLEAN NOT NULL,
    reason TEXT NULL,
    transfer_outcome TEXT NULL,
    turn_count BIGINT NOT NULL,
    ended_by TEXT NOT NULL,
    node TEXT NULL,
    -- The record as inserted, JSON text: read back exactly as it went in (JSONB would
    -- reorder keys and refuse a \u0000 in a string).
    record TEXT NOT NULL
);
CREATE INDEX calls_by_started ON calls (started_at_ms);
CREATE INDEX calls_by_flow ON calls (flow, started_at_ms);
CREATE INDEX calls_by_reason ON calls (reason, started_at_ms);
CREATE INDEX calls_by_call_id ON calls (call_id, started_at_ms);
CREATE INDEX calls_by_node ON calls (node, started_at_ms);
CREATE TABLE call_turns (
    id TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    idx BIGINT NOT NULL,
    intent TEXT NULL,
    confidence DOUBLE PRECISION NULL,
    PRIMARY KEY (id, idx)
);
