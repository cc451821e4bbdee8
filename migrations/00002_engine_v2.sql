-- Engine v2: rows carry their own attempt limit and a short hash of what
-- was stored; payloads can be erased while the row stays as the dedup
-- ledger; dead rows remember which worker owes their dead callback; one
-- table coordinates maintenance across instances.
--
-- Every change here is quick on a big table: columns are added with a
-- constant default or none (no rewrite), the new constraint is added NOT
-- VALID and validated by the next migration without blocking writes. The
-- statements still need the table's lock for a moment: rather than queue
-- behind a long transaction (and hold up every Set behind them), they give
-- up after a few seconds, and Migrate tries again.

-- +goose Up
SET LOCAL lock_timeout = '5s';

ALTER TABLE inbox_records
    -- NULL once retention erased it (WithPayloadRetention); the row stays,
    -- so a redelivery is still recognised as a duplicate.
    ALTER COLUMN payload DROP NOT NULL,
    -- CRC-64 (ECMA) of the event type and payload, set by Set; a
    -- redelivery with another hash is a conflicting duplicate. NULL for
    -- rows stored before this migration.
    ADD COLUMN payload_hash bigint,
    -- The most attempts this row gets, fixed when it is stored. Rows stored
    -- before this migration get the old default of 5. The default stays so
    -- that processes still running the previous release can keep storing
    -- rows during a rolling deploy.
    ADD COLUMN max_attempts integer NOT NULL DEFAULT 5,
    -- For a dead row: the worker that still owes its dead callback; NULL
    -- once delivered or when no callback is set.
    ADD COLUMN dead_callback_by uuid,
    -- How many times the row was claimed. Unlike attempts, which an attempt
    -- that does not count (handed back, or retried later at the handler's
    -- request) takes back, it only grows: with locked_by it names one
    -- claim, and guards every write of the worker holding it.
    ADD COLUMN claims integer NOT NULL DEFAULT 0;

ALTER TABLE inbox_records
    ADD CONSTRAINT inbox_records_max_attempts_check CHECK (max_attempts >= 1) NOT VALID;

-- Retention now walks the table in block ranges (see the Go code), so the
-- index on finished rows, maintained on every completion, goes.
DROP INDEX inbox_records_finished_idx;

-- One row per maintenance task: the instance that runs it holds a lease,
-- so that one instance, not all of them, runs each task per interval.
CREATE TABLE inbox_maintenance (
    task        text        PRIMARY KEY,
    holder      uuid,
    lease_until timestamptz,
    last_run_at timestamptz
);
INSERT INTO inbox_maintenance (task) VALUES ('retention');

-- +goose Down
-- Never run by the library; kept so an operator can undo it by hand.
DROP TABLE inbox_maintenance;
CREATE INDEX inbox_records_finished_idx ON inbox_records (updated_at)
    WHERE status IN ('done', 'dead');
ALTER TABLE inbox_records
    DROP CONSTRAINT inbox_records_max_attempts_check,
    DROP COLUMN claims,
    DROP COLUMN dead_callback_by,
    DROP COLUMN max_attempts,
    DROP COLUMN payload_hash;
