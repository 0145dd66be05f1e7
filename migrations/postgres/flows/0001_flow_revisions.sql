-- Flows on the shared store: every admin edit is a new revision holding the full set of the
-- flows directory's files (paths relative to the directory), announced with
-- NOTIFY voicebot_flows '<id>'.
CREATE TABLE flow_revisions (
    id BIGSERIAL PRIMARY KEY,
    node TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    change TEXT NOT NULL
);

CREATE TABLE flow_files (
    revision BIGINT NOT NULL REFERENCES flow_revisions (id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (revision, path)
);
