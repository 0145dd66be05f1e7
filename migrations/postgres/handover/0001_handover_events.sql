-- The hand-over events of every gateway of a cluster (contexts, hand-over events, lines heard
-- after the hand-over), so that an agent screen or a CTI fetch on any gateway sees every call.
-- A gateway appends its own events and follows the others' (LISTEN voicebot_handover).
CREATE TABLE handover_events (
    id BIGSERIAL PRIMARY KEY,
    node TEXT NOT NULL,
    -- 'publish' (a hand-over event; with a transcript it is the call's latest context) or
    -- 'line' (a line heard after the hand-over, appended to the context).
    op TEXT NOT NULL,
    kind TEXT NOT NULL,
    call_id TEXT NOT NULL,
    data JSONB NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX handover_events_by_call ON handover_events (call_id, id);
CREATE INDEX handover_events_by_created ON handover_events (created_ms);
