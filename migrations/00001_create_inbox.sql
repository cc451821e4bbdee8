-- The inbox table: one row per (event, handler key).
--
-- due_at is when the row is next due: for '' (null) and 'failed' rows the
-- time of the next attempt, for 'progress' rows the end of the lease. The
-- claim reads only due rows through inbox_records_due_idx, so its cost does
-- not grow with the number of finished rows kept for deduplication.

-- +goose Up
CREATE TABLE inbox_records (
    event_id    uuid        NOT NULL,
    handler_key text        NOT NULL,
    event_type  text        NOT NULL,
    payload     bytea       NOT NULL,
    event_date  timestamptz NOT NULL,
    status      text        NOT NULL DEFAULT '',
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text        NOT NULL DEFAULT '',
    due_at      timestamptz NOT NULL DEFAULT now(),
    locked_by   uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inbox_records_pkey PRIMARY KEY (event_id, handler_key),
    CONSTRAINT inbox_records_status_check
        CHECK (status IN ('', 'progress', 'failed', 'done', 'dead')),
    CONSTRAINT inbox_records_attempts_check CHECK (attempts >= 0),
    CONSTRAINT inbox_records_event_type_check
        CHECK (btrim(event_type) <> '' AND octet_length(event_type) <= 255),
    CONSTRAINT inbox_records_handler_key_check
        CHECK (btrim(handler_key) <> '' AND octet_length(handler_key) <= 255),
    CONSTRAINT inbox_records_lease_check
        CHECK ((status = 'progress') = (locked_by IS NOT NULL))
) WITH (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);

CREATE INDEX inbox_records_due_idx ON inbox_records (due_at)
    WHERE status IN ('', 'failed', 'progress');

CREATE INDEX inbox_records_finished_idx ON inbox_records (updated_at)
    WHERE status IN ('done', 'dead');

-- One row per running Inbox, renewed while it runs: tells "no worker is
-- running" apart from "work is slow".
CREATE TABLE inbox_workers (
    id          uuid        PRIMARY KEY,
    hostname    text        NOT NULL,
    pid         integer     NOT NULL,
    event_types text[]      NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    beat_at     timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- +goose Down
-- Never run by the library; kept so an operator can remove the inbox by hand.
DROP TABLE inbox_workers;
DROP TABLE inbox_records;
