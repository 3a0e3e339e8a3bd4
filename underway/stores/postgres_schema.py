"""The PostgreSQL store's schema, with the migrations that bring older ones up to date.

Every name the store uses lives here: its tables (prefixed `underway_`, so that they
sit beside an application's own tables, in the schema the URL's `?schema=` names)
and its notification channels. The store migrates on first use, under an advisory
lock, so that processes starting together do not migrate twice.
"""

from __future__ import annotations

import zlib

SCHEMA_VERSION = 4

# Each entry upgrades a schema from version N-1 to N; `{s}` is the quoted schema
# name. Never edit a released entry: add the next one, so that every earlier
# database still opens.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """
        CREATE TABLE {s}.underway_jobs (
            id               text PRIMARY KEY,
            task             text NOT NULL,
            queue            text NOT NULL,
            priority         integer NOT NULL DEFAULT 0,
            state            text NOT NULL,
            params           text NOT NULL,
            progress         text,
            result           text,
            error            text,
            cancel_requested boolean NOT NULL DEFAULT false,
            attempt          integer NOT NULL DEFAULT 0,
            max_attempts     integer NOT NULL DEFAULT 1,
            created_at       double precision NOT NULL,
            started_at       double precision,
            finished_at      double precision,
            expires_at       double precision,
            run_at           double precision NOT NULL DEFAULT 0,
            timeout          double precision,
            keep_for         double precision NOT NULL,
            output_count     integer NOT NULL DEFAULT 0,
            event_seq        integer NOT NULL DEFAULT 0,
            owner            text,
            idempotency_key  text UNIQUE,
            supersede_key    text,
            worker           text,
            lease_until      double precision,
            meta             text
        )
        """,
        # Few indexes on purpose: every one costs each claim and finish. Lists walk
        # the primary key newest first; queued and running jobs have partial indexes.
        "CREATE INDEX underway_jobs_ready ON {s}.underway_jobs (priority, id) "
        "WHERE state = 'queued'",
        "CREATE INDEX underway_jobs_queue ON {s}.underway_jobs (queue, priority, id) "
        "WHERE state = 'queued'",
        "CREATE INDEX underway_jobs_running ON {s}.underway_jobs (task, lease_until) "
        "WHERE state = 'running'",
        "CREATE INDEX underway_jobs_expiry ON {s}.underway_jobs (expires_at) "
        "WHERE expires_at IS NOT NULL",
        "CREATE INDEX underway_jobs_finished ON {s}.underway_jobs (finished_at) "
        "WHERE finished_at IS NOT NULL",
        "CREATE INDEX underway_jobs_supersede ON {s}.underway_jobs (supersede_key) "
        "WHERE supersede_key IS NOT NULL",
        # Events and output items belong to an attempt; output indexes restart at 0
        # with each attempt. An output event's `data` is its item.
        """
        CREATE TABLE {s}.underway_events (
            job_id  text NOT NULL,
            seq     integer NOT NULL,
            kind    text NOT NULL,
            idx     integer,
            data    text NOT NULL,
            at      double precision NOT NULL,
            attempt integer NOT NULL DEFAULT 0,
            PRIMARY KEY (job_id, seq)
        )
        """,
        "CREATE INDEX underway_events_output ON {s}.underway_events (job_id, attempt, idx) "
        "WHERE idx IS NOT NULL",
        # Workers say which tasks they serve, so that a queued job can tell why it waits.
        """
        CREATE TABLE {s}.underway_workers (
            id    text PRIMARY KEY,
            tasks text NOT NULL,
            until double precision NOT NULL
        )
        """,
    ],
    2: [
        # Worker processes with a slot waiting for work, so that a submission wakes one
        # of them rather than all (see `postgres_sql.Statements.submit`). A hint only:
        # unlogged (a crash empties it) and written at each claim that found nothing.
        """
        CREATE UNLOGGED TABLE {s}.underway_idle (
            channel text PRIMARY KEY,
            tasks   text[] NOT NULL,
            at      double precision NOT NULL
        )
        """,
    ],
    3: [
        # An idle process's word says how many of its slots wait (each submission
        # takes one; none said: one), and may carry its worker's name and lease, and
        # the tasks it takes without a concurrency limit: a submission of such a task
        # then claims the job for it in the same statement and sends it the job's row
        # (`postgres_sql.Statements.submit`), so that the worker need not claim it.
        # `push_key` is the advisory lock its listening connection holds meanwhile.
        "ALTER TABLE {s}.underway_idle ADD COLUMN slots integer, ADD COLUMN worker text, "
        "ADD COLUMN lease double precision, ADD COLUMN push_tasks text[], "
        "ADD COLUMN push_key bigint",
    ],
    4: [
        # A new job's first event (its `state` event, `queued`) stays on its row
        # (read back as event 1) instead of a row of the events table: a submission
        # writes a row and an index entry fewer. Jobs stored before keep theirs there.
        "ALTER TABLE {s}.underway_jobs ADD COLUMN IF NOT EXISTS first_event text",
        # Fewer index entries a job: only jobs with an idempotency key are in that
        # key's index (every insert and update of a row put a NULL there), one index
        # of queued jobs serves both claims (priority, then age, with the task and due
        # time at hand) and places in a queue (its queue at hand), and none orders the
        # finished jobs by their end (only a purge of jobs finished before a time, run
        # by hand, reads that order: it reads the table, as on SQLite).
        "ALTER TABLE {s}.underway_jobs DROP CONSTRAINT IF EXISTS underway_jobs_idempotency_key_key",
        "CREATE UNIQUE INDEX IF NOT EXISTS underway_jobs_idempotency "
        "ON {s}.underway_jobs (idempotency_key) WHERE idempotency_key IS NOT NULL",
        "DROP INDEX IF EXISTS {s}.underway_jobs_queue",
        "DROP INDEX IF EXISTS {s}.underway_jobs_ready",
        "DROP INDEX IF EXISTS {s}.underway_jobs_finished",
        "CREATE INDEX IF NOT EXISTS underway_jobs_queued ON {s}.underway_jobs (priority, id) "
        "INCLUDE (queue, task, run_at) WHERE state = 'queued'",
    ],
}

VERSION_TABLE = "{s}.underway_schema"


def quote(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def lock_key(schema: str) -> int:
    """The advisory lock key migrations of `schema` hold (a signed 64-bit integer)."""
    return zlib.crc32(f"underway-migrate:{schema}".encode()) - (1 << 31)


def channels(schema: str) -> tuple[str, str, str]:
    """The NOTIFY channels of `schema`: job changes (payload: origin, state, job ids),
    the changes that end a job or delete it (the same, on a channel of their own, for
    `wait()`, which needs no others), and new work. Channels are per database, so the
    schema is in the name; names longer than an identifier may be (63 bytes) are
    shortened with a checksum."""
    base = f"underway.{schema}"
    if len(base.encode()) > 55:
        base = f"underway.{zlib.crc32(schema.encode()):08x}"
    return f"{base}.jobs", f"{base}.ends", f"{base}.work"
