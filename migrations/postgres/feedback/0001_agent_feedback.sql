-- Agents' feedback on the bot (see src/handover/feedback.rs), shared by every gateway of a
-- cluster: the same columns as the SQLite table; ids in insertion order.
CREATE TABLE agent_feedback (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id TEXT NOT NULL,
    line BIGINT NOT NULL,
    utterance TEXT NOT NULL,
    bot_intent TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('good', 'wrong')),
    correct_intent TEXT NULL,
    note TEXT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX agent_feedback_call ON agent_feedback (call_id);
