-- The initial cloudterm metadata schema (PostgreSQL), the twin of migrations/sqlite/0001_initial.sql:
-- the same tables, columns, keys and indexes, so both backends keep the same rules. See
-- docs/data_models.md. Differences, all deliberate:
-- * Every TEXT column is COLLATE "C": equality and ORDER BY compare bytes, as SQLite's BINARY
--   collation does, whatever locale the database was created with (id tie-breaks sort alike).
-- * Times stay BIGINT unix milliseconds and lists/JSON stay TEXT holding JSON, so both backends
--   bind and decode the same values (JSONB would also refuse the \u0000 escape that text keeps).
-- * share_audit.id is an identity column; worker_search is a tsvector table with a GIN index
--   instead of an FTS5 virtual table.

CREATE TABLE workspaces (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner       TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    description TEXT COLLATE "C" NOT NULL DEFAULT '',
    tags        TEXT COLLATE "C" NOT NULL DEFAULT '[]',
    is_home     BOOLEAN          NOT NULL DEFAULT FALSE,
    created_at  BIGINT           NOT NULL,
    CONSTRAINT workspaces_owner_name_key UNIQUE (owner, name)
);
-- At most one home workspace per owner.
CREATE UNIQUE INDEX workspaces_one_home_per_owner ON workspaces (owner) WHERE is_home;

-- One row per (workspace, tag): the indexed form of `workspaces.tags` used for tag filters.
CREATE TABLE workspace_tags (
    workspace_id TEXT COLLATE "C" NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    tag          TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (workspace_id, tag)
);
CREATE INDEX workspace_tags_tag ON workspace_tags (tag);

-- The home workspace is inserted after the principal in the same transaction, hence DEFERRABLE;
-- the check at commit is also what refuses deleting a home workspace.
CREATE TABLE principals (
    id                TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    home_workspace_id TEXT COLLATE "C" NOT NULL
        REFERENCES workspaces (id) DEFERRABLE INITIALLY DEFERRED,
    created_at        BIGINT           NOT NULL
);

CREATE TABLE sandboxes (
    id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    owner        TEXT COLLATE "C" NOT NULL,
    workspace_id TEXT COLLATE "C",
    state        TEXT COLLATE "C" NOT NULL,
    runtime      TEXT COLLATE "C" NOT NULL,
    image        TEXT COLLATE "C",
    limits       TEXT COLLATE "C" NOT NULL DEFAULT '{}',
    metadata     TEXT COLLATE "C" NOT NULL DEFAULT '{}',
    created_at   BIGINT           NOT NULL,
    expires_at   BIGINT           NOT NULL,
    updated_at   BIGINT           NOT NULL
);
CREATE INDEX sandboxes_owner ON sandboxes (owner, created_at);
CREATE INDEX sandboxes_state ON sandboxes (state);

CREATE TABLE snapshots (
    id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    workspace_id TEXT COLLATE "C" NOT NULL,
    owner        TEXT COLLATE "C" NOT NULL,
    label        TEXT COLLATE "C",
    kind         TEXT COLLATE "C" NOT NULL,
    pinned       BOOLEAN          NOT NULL DEFAULT FALSE,
    state        TEXT COLLATE "C" NOT NULL CHECK (state IN ('pending', 'ready')),
    object_key   TEXT COLLATE "C" NOT NULL,
    size_bytes   BIGINT           NOT NULL DEFAULT 0,
    stored_bytes BIGINT           NOT NULL DEFAULT 0,
    file_count   BIGINT           NOT NULL DEFAULT 0,
    sha256       TEXT COLLATE "C",
    created_at   BIGINT           NOT NULL
);
CREATE INDEX snapshots_workspace ON snapshots (workspace_id, state, created_at);
CREATE INDEX snapshots_state ON snapshots (state);

CREATE TABLE shares (
    workspace_id TEXT COLLATE "C" NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    agent_id     TEXT COLLATE "C" NOT NULL,
    permission   TEXT COLLATE "C" NOT NULL,
    granted_by   TEXT COLLATE "C" NOT NULL,
    granted_at   BIGINT           NOT NULL,
    PRIMARY KEY (workspace_id, agent_id)
);
CREATE INDEX shares_agent ON shares (agent_id);

-- The audit trail outlives its workspace on purpose: no foreign key.
CREATE TABLE share_audit (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id TEXT COLLATE "C" NOT NULL,
    actor        TEXT COLLATE "C" NOT NULL,
    action       TEXT COLLATE "C" NOT NULL,
    subject      TEXT COLLATE "C" NOT NULL,
    permission   TEXT COLLATE "C",
    at           BIGINT           NOT NULL
);
CREATE INDEX share_audit_workspace ON share_audit (workspace_id, id);

-- `latest_version` names the worker_versions row that search results show; NULL until the
-- first version is published.
CREATE TABLE workers (
    id             TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name           TEXT COLLATE "C" NOT NULL,
    author         TEXT COLLATE "C" NOT NULL,
    created_at     BIGINT           NOT NULL,
    latest_version TEXT COLLATE "C",
    CONSTRAINT workers_name_key UNIQUE (name)
);

CREATE TABLE worker_versions (
    worker_id   TEXT COLLATE "C" NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    version     TEXT COLLATE "C" NOT NULL,
    description TEXT COLLATE "C" NOT NULL DEFAULT '',
    tags        TEXT COLLATE "C" NOT NULL DEFAULT '[]',
    command     TEXT COLLATE "C" NOT NULL,
    files_key   TEXT COLLATE "C",
    created_at  BIGINT           NOT NULL,
    PRIMARY KEY (worker_id, version)
);

-- The tags of each worker's latest version, for exact tag filters in search.
CREATE TABLE worker_tags (
    worker_id TEXT COLLATE "C" NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    tag       TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (worker_id, tag)
);
CREATE INDEX worker_tags_tag ON worker_tags (tag);

-- PostgreSQL-only: the full-text document of each worker with a published version: its name
-- (weight A), its latest version's tags (B) and description (C), stemmed with the `english`
-- configuration. Maintained by the store in the transaction that publishes a version, matched
-- with `@@` through the GIN index and ranked with ts_rank.
CREATE TABLE worker_search (
    worker_id TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES workers (id) ON DELETE CASCADE,
    document  TSVECTOR         NOT NULL
);
CREATE INDEX worker_search_document ON worker_search USING GIN (document);

CREATE TABLE previews (
    sandbox_id          TEXT COLLATE "C" NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    port                INTEGER          NOT NULL,
    owner               TEXT COLLATE "C" NOT NULL,
    public              BOOLEAN          NOT NULL DEFAULT FALSE,
    fallback_sandbox_id TEXT COLLATE "C",
    created_at          BIGINT           NOT NULL,
    PRIMARY KEY (sandbox_id, port)
);
CREATE INDEX previews_owner ON previews (owner);
