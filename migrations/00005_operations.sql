-- Operations, part 1: two columns, and the tables beside inbox_records
-- for the counters, the history of failures and replays, and pauses.
-- Migration 00006 indexes the dead rows, 00007 makes the table count its
-- rows.
--
-- Adding columns without a default does not rewrite the table, but takes
-- its ACCESS EXCLUSIVE lock for a moment: rather than queue behind a long
-- transaction (and hold up every Set behind it), the statement gives up
-- after 5 seconds, and Migrate tries again.

-- +goose Up
SET LOCAL lock_timeout = '5s';

ALTER TABLE inbox_records
    -- The Go type of the root cause of the last failure (or a name for
    -- the inbox's own failures); with the normalised last_error it makes
    -- the fingerprint by which dead rows are grouped.
    ADD COLUMN error_type text,
    -- The trace context of the code that stored the row (a W3C
    -- traceparent, as a Propagator gives it, or the record's own), so that
    -- the handler's trace continues the producer's. NULL for none.
    ADD COLUMN trace_context text;

CREATE TABLE inbox_counts (
    event_type  text   NOT NULL,
    handler_key text   NOT NULL,
    status      text   NOT NULL,
    n           bigint NOT NULL,
    PRIMARY KEY (event_type, handler_key, status)
);

-- Appended to by the trigger, emptied by each fold; no index, so appending
-- is as cheap as a heap insert.
CREATE TABLE inbox_count_deltas (
    event_type  text        NOT NULL,
    handler_key text        NOT NULL,
    status      text        NOT NULL,
    n           bigint      NOT NULL,
    -- Rows that reached done or dead in the statement.
    finished    bigint      NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);

-- Rows finished per minute, per handler, kept for two hours.
CREATE TABLE inbox_throughput (
    event_type  text        NOT NULL,
    handler_key text        NOT NULL,
    minute      timestamptz NOT NULL,
    done        bigint      NOT NULL,
    dead        bigint      NOT NULL,
    PRIMARY KEY (event_type, handler_key, minute)
);

-- Failed attempts and operators' actions, per row; retention deletes
-- entries older than the dedup window.
CREATE TABLE inbox_history (
    event_id    uuid        NOT NULL,
    handler_key text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- 'failed' or 'dead' (written by the trigger, with the actor an
    -- operator's transaction set in inbox.actor), 'replayed' (by an
    -- operator).
    kind        text        NOT NULL,
    attempt     integer     NOT NULL,
    actor       text        NOT NULL DEFAULT '',
    text        text        NOT NULL DEFAULT ''
);
CREATE INDEX inbox_history_row_idx ON inbox_history (event_id, handler_key, at);
CREATE INDEX inbox_history_at_idx ON inbox_history USING brin (at);

-- Paused handlers: workers claim no row of a matching (event type, handler
-- key); '' matches any.
CREATE TABLE inbox_pauses (
    event_type  text        NOT NULL DEFAULT '',
    handler_key text        NOT NULL DEFAULT '',
    paused_at   timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL DEFAULT '',
    reason      text        NOT NULL DEFAULT '',
    PRIMARY KEY (event_type, handler_key),
    CONSTRAINT inbox_pauses_target_check CHECK (event_type <> '' OR handler_key <> '')
);

-- +goose Down
-- Never run by the library; kept so an operator can undo it by hand.
DROP TABLE inbox_pauses;
DROP TABLE inbox_history;
DROP TABLE inbox_throughput;
DROP TABLE inbox_count_deltas;
DROP TABLE inbox_counts;
ALTER TABLE inbox_records DROP COLUMN trace_context, DROP COLUMN error_type;
