"""The SQLite store's schema, with the migrations that bring older files up to date."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

SCHEMA_VERSION = 5

_V4_COLUMNS = (
    "id, task, queue, priority, state, params, progress, result, error, cancel_requested, "
    "attempt, max_attempts, created_at, started_at, finished_at, expires_at, run_at, timeout, "
    "keep_for, output_count, event_seq, owner, idempotency_key, supersede_key, worker, "
    "lease_until, meta, first_event"
)

# Each entry upgrades a file from version N-1 to N. Never edit a released entry:
# add the next one, so that every earlier file still opens.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS jobs (
        id               TEXT PRIMARY KEY,
        task             TEXT NOT NULL,
        queue            TEXT NOT NULL,
        priority         INTEGER NOT NULL DEFAULT 0,
        state            TEXT NOT NULL,
        params           TEXT NOT NULL,
        progress         TEXT,
        result           TEXT,
        error            TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        attempt          INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL DEFAULT 1,
        created_at       REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        expires_at       REAL,
        run_at           REAL NOT NULL DEFAULT 0,
        timeout          REAL,
        keep_for         REAL NOT NULL,
        output_count     INTEGER NOT NULL DEFAULT 0,
        event_seq        INTEGER NOT NULL DEFAULT 0,
        owner            TEXT,
        idempotency_key  TEXT UNIQUE,
        supersede_key    TEXT,
        worker           TEXT,
        lease_until      REAL,
        meta             TEXT
    );
    CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (priority, id) WHERE state = 'queued';
    CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_until) WHERE state = 'running';
    CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
    -- Few indexes on purpose: every one costs each claim and finish. Lists walk the
    -- primary key newest first; queued and running jobs have partial indexes of their own.
    CREATE INDEX IF NOT EXISTS jobs_supersede ON jobs (supersede_key)
        WHERE supersede_key IS NOT NULL;
    CREATE TABLE IF NOT EXISTS events (
        job_id TEXT NOT NULL,
        seq    INTEGER NOT NULL,
        kind   TEXT NOT NULL,
        idx    INTEGER,
        data   TEXT NOT NULL,
        at     REAL NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS events_output ON events (job_id, idx) WHERE idx IS NOT NULL;
    -- State changes write their own events, inside the statement that makes them, so a
    -- claim or a finish is one statement. Each such UPDATE raises event_seq by 1 (to a
    -- non-terminal state) or by 2 (to a terminal one: a state event, then done).
    CREATE TRIGGER IF NOT EXISTS jobs_queued_event AFTER INSERT ON jobs BEGIN
        INSERT INTO events (job_id, seq, kind, idx, data, at)
        VALUES (NEW.id, NEW.event_seq, 'state', NULL, '{"state":"queued"}', NEW.created_at);
    END;
    CREATE TRIGGER IF NOT EXISTS jobs_state_event AFTER UPDATE OF state ON jobs
    WHEN NEW.state != OLD.state AND NEW.state IN ('queued', 'running') BEGIN
        INSERT INTO events (job_id, seq, kind, idx, data, at)
        VALUES (NEW.id, NEW.event_seq, 'state', NULL,
                json_object('state', NEW.state, 'attempt', NEW.attempt),
                (julianday('now') - 2440587.5) * 86400.0);
    END;
    CREATE TRIGGER IF NOT EXISTS jobs_done_event AFTER UPDATE OF state ON jobs
    WHEN NEW.state != OLD.state AND NEW.state IN ('succeeded', 'failed', 'cancelled') BEGIN
        INSERT INTO events (job_id, seq, kind, idx, data, at)
        VALUES (NEW.id, NEW.event_seq - 1, 'state', NULL, json_object('state', NEW.state),
                NEW.finished_at);
        INSERT INTO events (job_id, seq, kind, idx, data, at)
        VALUES (NEW.id, NEW.event_seq, 'done', NULL,
                json_object('state', NEW.state, 'result', json(coalesce(NEW.result, 'null')),
                            'error', json(coalesce(NEW.error, 'null'))),
                NEW.finished_at);
    END;
    """,
    # The engine writes every event itself (see underway/lifecycle.py): no triggers.
    # Events and output items belong to an attempt; output indexes restart at 0 with
    # each attempt.
    2: """
    DROP TRIGGER IF EXISTS jobs_queued_event;
    DROP TRIGGER IF EXISTS jobs_state_event;
    DROP TRIGGER IF EXISTS jobs_done_event;
    ALTER TABLE events ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
    DROP INDEX IF EXISTS events_output;
    CREATE INDEX IF NOT EXISTS events_output ON events (job_id, attempt, idx)
        WHERE idx IS NOT NULL;
    """,
    # Workers say which tasks they serve, so that a queued job can tell why it waits.
    3: """
    CREATE TABLE IF NOT EXISTS workers (
        id    TEXT PRIMARY KEY,
        tasks TEXT NOT NULL,
        until REAL NOT NULL
    );
    -- The engine gives each new job its first event (`lifecycle.submitted`); it rides
    -- in on the job's row and this trigger files it, so that a submission is one
    -- statement. The trigger decides nothing: it copies what it was given.
    ALTER TABLE jobs ADD COLUMN first_event TEXT;
    CREATE TRIGGER IF NOT EXISTS jobs_first_event AFTER INSERT ON jobs
    WHEN NEW.first_event IS NOT NULL BEGIN
        INSERT INTO events (job_id, seq, kind, idx, data, at, attempt)
        VALUES (NEW.id, 1, 'state', NULL, NEW.first_event, NEW.created_at, 0);
    END;
    -- A queued job's place in its queue is counted on this index alone (capped: see
    -- records.POSITION_LIMIT), so a deep queue's reads stay cheap.
    CREATE INDEX IF NOT EXISTS jobs_position ON jobs (queue, priority, id)
        WHERE state = 'queued';
    """,
    # Fewer pages written per submission, claim and end (each is a page in the WAL):
    # the table is ordered by its id itself (no separate index for the primary key),
    # only jobs that have an idempotency key are in that key's index, and one index of
    # queued jobs serves both claims (priority, then age, with task and due time at
    # hand) and places in a queue.
    4: """
    CREATE TABLE jobs_v4 (
        id               TEXT PRIMARY KEY NOT NULL,
        task             TEXT NOT NULL,
        queue            TEXT NOT NULL,
        priority         INTEGER NOT NULL DEFAULT 0,
        state            TEXT NOT NULL,
        params           TEXT NOT NULL,
        progress         TEXT,
        result           TEXT,
        error            TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        attempt          INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL DEFAULT 1,
        created_at       REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        expires_at       REAL,
        run_at           REAL NOT NULL DEFAULT 0,
        timeout          REAL,
        keep_for         REAL NOT NULL,
        output_count     INTEGER NOT NULL DEFAULT 0,
        event_seq        INTEGER NOT NULL DEFAULT 0,
        owner            TEXT,
        idempotency_key  TEXT,
        supersede_key    TEXT,
        worker           TEXT,
        lease_until      REAL,
        meta             TEXT,
        first_event      TEXT
    ) WITHOUT ROWID;
    INSERT INTO jobs_v4 (COLS) SELECT COLS FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v4 RENAME TO jobs;
    CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (priority, id, queue, task, run_at, state)
        WHERE state = 'queued';
    CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_until) WHERE state = 'running';
    CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX IF NOT EXISTS jobs_supersede ON jobs (supersede_key)
        WHERE supersede_key IS NOT NULL;
    CREATE TRIGGER IF NOT EXISTS jobs_first_event AFTER INSERT ON jobs
    WHEN NEW.first_event IS NOT NULL BEGIN
        INSERT INTO events (job_id, seq, kind, idx, data, at, attempt)
        VALUES (NEW.id, 1, 'state', NULL, NEW.first_event, NEW.created_at, 0);
    END;
    """.replace("COLS", _V4_COLUMNS),
    # A new job's first event stays on its row (`first_event`, read as event 1)
    # instead of being copied into events: a submission writes one row and one page
    # fewer. Rows of earlier versions had theirs copied already. From this version
    # on, events also holds rows of kind `end` (an end's state and done events in
    # one row), which older versions could not read.
    5: """
    DROP TRIGGER IF EXISTS jobs_first_event;
    UPDATE jobs SET first_event = NULL WHERE first_event IS NOT NULL;
    """,
}


def statements(script: str) -> Iterator[str]:
    """Split a script into statements (trigger bodies hold semicolons of their own)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()
