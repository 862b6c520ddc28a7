-- The initial cloudterm metadata schema (SQLite). See docs/data_models.md.
-- Portability rules: times are BIGINT unix milliseconds (UTC), lists and JSON objects are TEXT
-- holding JSON, booleans are BOOLEAN, ids are caller-chosen TEXT. Only `worker_search` (FTS5) is
-- SQLite-specific; a PostgreSQL migration replaces it with a tsvector column or table.

CREATE TABLE workspaces (
    id          TEXT    NOT NULL PRIMARY KEY,
    owner       TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    tags        TEXT    NOT NULL DEFAULT '[]',
    is_home     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT  NOT NULL,
    CONSTRAINT workspaces_owner_name_key UNIQUE (owner, name)
);
-- At most one home workspace per owner.
CREATE UNIQUE INDEX workspaces_one_home_per_owner ON workspaces (owner) WHERE is_home;

-- One row per (workspace, tag): the indexed form of `workspaces.tags` used for tag filters.
CREATE TABLE workspace_tags (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    tag          TEXT NOT NULL,
    PRIMARY KEY (workspace_id, tag)
);
CREATE INDEX workspace_tags_tag ON workspace_tags (tag);

-- The home workspace is inserted after the principal in the same transaction, hence DEFERRABLE.
CREATE TABLE principals (
    id                TEXT   NOT NULL PRIMARY KEY,
    home_workspace_id TEXT   NOT NULL
        REFERENCES workspaces (id) DEFERRABLE INITIALLY DEFERRED,
    created_at        BIGINT NOT NULL
);

CREATE TABLE sandboxes (
    id           TEXT   NOT NULL PRIMARY KEY,
    owner        TEXT   NOT NULL,
    workspace_id TEXT,
    state        TEXT   NOT NULL,
    runtime      TEXT   NOT NULL,
    image        TEXT,
    limits       TEXT   NOT NULL DEFAULT '{}',
    metadata     TEXT   NOT NULL DEFAULT '{}',
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX sandboxes_owner ON sandboxes (owner, created_at);
CREATE INDEX sandboxes_state ON sandboxes (state);

CREATE TABLE snapshots (
    id           TEXT    NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL,
    owner        TEXT    NOT NULL,
    label        TEXT,
    kind         TEXT    NOT NULL,
    pinned       BOOLEAN NOT NULL DEFAULT FALSE,
    state        TEXT    NOT NULL CHECK (state IN ('pending', 'ready')),
    object_key   TEXT    NOT NULL,
    size_bytes   BIGINT  NOT NULL DEFAULT 0,
    stored_bytes BIGINT  NOT NULL DEFAULT 0,
    file_count   BIGINT  NOT NULL DEFAULT 0,
    sha256       TEXT,
    created_at   BIGINT  NOT NULL
);
CREATE INDEX snapshots_workspace ON snapshots (workspace_id, state, created_at);
CREATE INDEX snapshots_state ON snapshots (state);

CREATE TABLE shares (
    workspace_id TEXT   NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    agent_id     TEXT   NOT NULL,
    permission   TEXT   NOT NULL,
    granted_by   TEXT   NOT NULL,
    granted_at   BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, agent_id)
);
CREATE INDEX shares_agent ON shares (agent_id);

-- The audit trail outlives its workspace on purpose: no foreign key.
-- PostgreSQL: id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY.
CREATE TABLE share_audit (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    permission   TEXT,
    at           BIGINT  NOT NULL
);
CREATE INDEX share_audit_workspace ON share_audit (workspace_id, id);

-- `latest_version` names the worker_versions row that search results show; NULL until the
-- first version is published.
CREATE TABLE workers (
    id             TEXT   NOT NULL PRIMARY KEY,
    name           TEXT   NOT NULL,
    author         TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    latest_version TEXT,
    CONSTRAINT workers_name_key UNIQUE (name)
);

CREATE TABLE worker_versions (
    worker_id   TEXT   NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    version     TEXT   NOT NULL,
    description TEXT   NOT NULL DEFAULT '',
    tags        TEXT   NOT NULL DEFAULT '[]',
    command     TEXT   NOT NULL,
    files_key   TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (worker_id, version)
);

-- The tags of each worker's latest version, for exact tag filters in search.
CREATE TABLE worker_tags (
    worker_id TEXT NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    tag       TEXT NOT NULL,
    PRIMARY KEY (worker_id, tag)
);
CREATE INDEX worker_tags_tag ON worker_tags (tag);

-- SQLite-only: full-text index over each worker's name and latest description and tags.
-- Maintained by the store (one row per worker with a published version), ranked with bm25.
CREATE VIRTUAL TABLE worker_search USING fts5 (
    worker_id UNINDEXED,
    name,
    description,
    tags,
    tokenize = 'porter unicode61'
);

CREATE TABLE previews (
    sandbox_id          TEXT    NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    port                INTEGER NOT NULL,
    owner               TEXT    NOT NULL,
    public              BOOLEAN NOT NULL DEFAULT FALSE,
    fallback_sandbox_id TEXT,
    created_at          BIGINT  NOT NULL,
    PRIMARY KEY (sandbox_id, port)
);
CREATE INDEX previews_owner ON previews (owner);
