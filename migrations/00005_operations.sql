-- Operations: counters kept by the table itself, so that statistics stay
-- cheap however many finished rows are kept; a history of failures and of
-- operators' actions; paused handlers; the type of each row's last error,
-- and an index on dead rows for the dead-letter views.
--
-- Counting: a statement trigger with transition tables appends, per
-- statement, one delta row per (event type, handler key, status) whose
-- count it changed. Appending never waits for another transaction (no
-- counter row is shared by concurrent writers); the deltas are folded into
-- inbox_counts and inbox_throughput by whoever reads statistics and by the
-- workers' maintenance. The counts read are the folded counts plus the
-- deltas not yet folded, exact in the reader's snapshot.
--
-- Creating the triggers locks out writes to inbox_records (SHARE ROW
-- EXCLUSIVE) until this migration commits, while the present rows are
-- counted once: on a large table, run it when a pause of writes of a few
-- seconds per million rows is acceptable. It gives up after 5 seconds
-- rather than queue behind a long transaction, and Migrate tries again.

-- +goose Up
SET LOCAL lock_timeout = '5s';

ALTER TABLE inbox_records
    -- The Go type of the root cause of the last failure (or a name for
    -- the inbox's own failures); with the normalised last_error it makes
    -- the fingerprint by which dead rows are grouped.
    ADD COLUMN error_type text;

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

-- Failed attempts and operators' actions, per row, kept as long as rows
-- are (retention deletes entries older than the dedup window).
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

-- Dead rows, newest first: the dead-letter views and lists.
CREATE INDEX inbox_records_dead_idx ON inbox_records (updated_at, event_id, handler_key)
    WHERE status = 'dead';

-- +goose StatementBegin
CREATE FUNCTION inbox_records_tally() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO inbox_count_deltas (event_type, handler_key, status, n, finished)
        SELECT event_type, handler_key, status, count(*), 0
        FROM inbox_new GROUP BY 1, 2, 3;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO inbox_count_deltas (event_type, handler_key, status, n, finished)
        SELECT event_type, handler_key, status, -count(*), 0
        FROM inbox_old GROUP BY 1, 2, 3;
    ELSE
        INSERT INTO inbox_count_deltas (event_type, handler_key, status, n, finished)
        SELECT event_type, handler_key, status, sum(d),
               CASE WHEN status IN ('done', 'dead') THEN greatest(sum(d), 0) ELSE 0 END
        FROM (SELECT event_type, handler_key, status, 1 AS d FROM inbox_new
              UNION ALL
              SELECT event_type, handler_key, status, -1 FROM inbox_old) c
        GROUP BY 1, 2, 3
        HAVING sum(d) <> 0;
        INSERT INTO inbox_history (event_id, handler_key, kind, attempt, actor, text)
        SELECT n.event_id, n.handler_key, n.status, n.attempts,
               coalesce(current_setting('inbox.actor', true), ''), left(n.last_error, 1024)
        FROM inbox_new n
        JOIN inbox_old o ON o.event_id = n.event_id AND o.handler_key = n.handler_key
        WHERE n.status IN ('failed', 'dead')
          AND (o.status, o.attempts, o.last_error) IS DISTINCT FROM (n.status, n.attempts, n.last_error);
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION inbox_records_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM inbox_counts;
    DELETE FROM inbox_count_deltas;
    DELETE FROM inbox_history;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER inbox_records_tally_insert AFTER INSERT ON inbox_records
    REFERENCING NEW TABLE AS inbox_new
    FOR EACH STATEMENT EXECUTE FUNCTION inbox_records_tally();
CREATE TRIGGER inbox_records_tally_update AFTER UPDATE ON inbox_records
    REFERENCING OLD TABLE AS inbox_old NEW TABLE AS inbox_new
    FOR EACH STATEMENT EXECUTE FUNCTION inbox_records_tally();
CREATE TRIGGER inbox_records_tally_delete AFTER DELETE ON inbox_records
    REFERENCING OLD TABLE AS inbox_old
    FOR EACH STATEMENT EXECUTE FUNCTION inbox_records_tally();
CREATE TRIGGER inbox_records_tally_truncate AFTER TRUNCATE ON inbox_records
    FOR EACH STATEMENT EXECUTE FUNCTION inbox_records_truncated();

-- The rows present now, counted under the triggers' lock: no write can
-- slip between the count and the first delta.
INSERT INTO inbox_counts (event_type, handler_key, status, n)
SELECT event_type, handler_key, status, count(*) FROM inbox_records GROUP BY 1, 2, 3;

-- +goose Down
-- Never run by the library; kept so an operator can undo it by hand.
DROP TRIGGER inbox_records_tally_truncate ON inbox_records;
DROP TRIGGER inbox_records_tally_delete ON inbox_records;
DROP TRIGGER inbox_records_tally_update ON inbox_records;
DROP TRIGGER inbox_records_tally_insert ON inbox_records;
DROP FUNCTION inbox_records_truncated();
DROP FUNCTION inbox_records_tally();
DROP INDEX inbox_records_dead_idx;
DROP TABLE inbox_pauses;
DROP TABLE inbox_history;
DROP TABLE inbox_throughput;
DROP TABLE inbox_count_deltas;
DROP TABLE inbox_counts;
ALTER TABLE inbox_records DROP COLUMN error_type;
