-- Operations, part 2: the table counts its rows and records the history of
-- failures.
--
-- Counting: a statement trigger with transition tables appends, per
-- statement, one delta row per (event type, handler key, status) whose
-- count it changed. Appending never waits for another transaction (no
-- counter row is shared by concurrent writers); the deltas are folded into
-- inbox_counts and inbox_throughput by whoever reads statistics and by the
-- workers' maintenance, one fold at a time (an advisory lock). The counts
-- read are the folded counts plus the deltas not yet folded, exact in the
-- reader's snapshot.
--
-- History: a row trigger, fired only by the updates that record a counted
-- failed attempt or a death (its WHEN clause is checked without calling
-- it), appends the failure to inbox_history, with the operator an admin
-- transaction names in the setting inbox.actor.
--
-- The functions find their tables in this schema whatever the writer's
-- search_path (their own search_path is set below).
--
-- Creating the triggers takes a SHARE ROW EXCLUSIVE lock on inbox_records:
-- writes wait (reads go on) until this migration commits, while the rows
-- present are counted once (about a second per million rows). It gives up
-- after 5 seconds rather than queue behind a long transaction, and Migrate
-- tries again.

-- +goose Up
SET LOCAL lock_timeout = '5s';

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
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION inbox_records_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbox_history (event_id, handler_key, kind, attempt, actor, text)
    VALUES (NEW.event_id, NEW.handler_key, NEW.status, NEW.attempts,
            coalesce(current_setting('inbox.actor', true), ''), left(NEW.last_error, 1024));
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- TRUNCATE empties the counters too, after any fold in progress (the
-- fold's lock), so that no fold commits counts of rows that are gone.
-- +goose StatementBegin
CREATE FUNCTION inbox_records_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(current_schema() || '.inbox_count_deltas'));
    DELETE FROM inbox_counts;
    DELETE FROM inbox_count_deltas;
    DELETE FROM inbox_throughput;
    DELETE FROM inbox_history;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION inbox_records_tally() SET search_path = %I', current_schema());
    EXECUTE format('ALTER FUNCTION inbox_records_history() SET search_path = %I', current_schema());
    EXECUTE format('ALTER FUNCTION inbox_records_truncated() SET search_path = %I', current_schema());
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
-- A failed attempt that counted (not one handed back, nor a RetryAfter,
-- which take their attempt back), or a death.
CREATE TRIGGER inbox_records_history AFTER UPDATE OF status, attempts, last_error ON inbox_records
    FOR EACH ROW
    WHEN (NEW.status IN ('failed', 'dead')
          AND (NEW.status = 'dead' OR NEW.attempts >= OLD.attempts)
          AND (OLD.status, OLD.attempts, OLD.last_error) IS DISTINCT FROM (NEW.status, NEW.attempts, NEW.last_error))
    EXECUTE FUNCTION inbox_records_history();

-- The rows present now, counted under the triggers' lock: no write can
-- slip between the count and the first delta.
INSERT INTO inbox_counts (event_type, handler_key, status, n)
SELECT event_type, handler_key, status, count(*) FROM inbox_records GROUP BY 1, 2, 3;

-- +goose Down
-- Never run by the library; kept so an operator can undo it by hand.
DROP TRIGGER inbox_records_history ON inbox_records;
DROP TRIGGER inbox_records_tally_truncate ON inbox_records;
DROP TRIGGER inbox_records_tally_delete ON inbox_records;
DROP TRIGGER inbox_records_tally_update ON inbox_records;
DROP TRIGGER inbox_records_tally_insert ON inbox_records;
DROP FUNCTION inbox_records_truncated();
DROP FUNCTION inbox_records_history();
DROP FUNCTION inbox_records_tally();
DELETE FROM inbox_counts;
