package inbox

// Every statement the package runs. Table names are unqualified: the inbox
// lives in the schema the connection's search_path resolves to.

// setSQL stores rows, one per (record, registered handler key), in one
// statement; rows that exist already are left alone. When asked to ($6),
// each inserted row notifies idle workers: PostgreSQL folds the identical
// notifications of a transaction into one, delivered at commit, and sends
// none when nothing was inserted.
var setSQL = `
INSERT INTO inbox_records (event_id, handler_key, event_type, payload, event_date)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::timestamptz[])
ON CONFLICT (event_id, handler_key) DO NOTHING
RETURNING ` + notifyIf("$6")

// notifyIf is a RETURNING expression that notifies the table's channel
// when the boolean parameter flag is true.
func notifyIf(flag string) string {
	return `CASE WHEN ` + flag + `::bool THEN pg_notify(` + channelExpr + `, '') END`
}

// channelExpr names the notification channel of the inbox table in the
// current schema; a schema name too long for a channel is hashed.
const channelExpr = `(CASE WHEN octet_length(current_schema()) <= 49
    THEN current_schema() ELSE md5(current_schema()) END || '.inbox_records')`

const channelSQL = `SELECT ` + channelExpr

// claimSQL locks up to $3 due rows of the registered (event type, handler
// key) pairs, oldest due first, skipping rows other workers hold, and leases
// them to worker $5 for $6 milliseconds, counting an attempt. A row whose
// lease expired (its worker died) is claimed again, its lost attempt
// recorded ($7); if it has used up its $4 attempts it becomes dead instead.
//
// The MATERIALIZED CTE cannot lock more rows than the limit. The update
// reaches the locked rows by ctid = ANY(ARRAY(...)), a TID scan whatever
// plan the statement gets: joining the CTE back to the table lets a generic
// plan hash-join the whole table. The old status comes back through a join
// of the two small CTE results.
const claimSQL = `
WITH due AS MATERIALIZED (
    SELECT ctid, event_id, handler_key, status
    FROM inbox_records
    WHERE status IN ('', 'failed', 'progress')
      AND due_at <= now()
      AND (event_type, handler_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
    ORDER BY due_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE inbox_records AS r
    SET status     = CASE WHEN r.attempts >= $4 THEN 'dead' ELSE 'progress' END,
        attempts   = CASE WHEN r.attempts >= $4 THEN r.attempts ELSE r.attempts + 1 END,
        last_error = CASE WHEN r.status = 'progress'
                          THEN 'attempt ' || r.attempts || ': ' || $7::text
                          ELSE r.last_error END,
        locked_by  = CASE WHEN r.attempts >= $4 THEN NULL ELSE $5::uuid END,
        due_at     = CASE WHEN r.attempts >= $4 THEN r.due_at
                          ELSE now() + $6::bigint * interval '1 millisecond' END,
        updated_at = now()
    WHERE r.ctid = ANY (ARRAY(SELECT ctid FROM due))
    RETURNING r.event_id, r.event_type, r.handler_key, r.payload, r.attempts, r.status, r.last_error
)
SELECT c.event_id, c.event_type, c.handler_key, c.payload, c.attempts, c.status,
       d.status = 'progress' AS rescued, c.last_error
FROM claimed c
JOIN due d ON d.event_id = c.event_id AND d.handler_key = c.handler_key`

// completeSQL writes the results of many attempts in one statement. Each
// row is written only while worker $7 still holds it for that attempt, so a
// late writer never overwrites a newer attempt. Null error or due time
// keeps the stored one.
var completeSQL = `
WITH ` + byKey(`unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::timestamptz[])
         AS u(event_id, handler_key, attempts, status, last_error, due_at)`) + `
UPDATE inbox_records AS r
SET status     = v.status,
    last_error = coalesce(v.last_error, r.last_error),
    due_at     = coalesce(v.due_at, r.due_at),
    locked_by  = NULL,
    updated_at = now()
FROM v
WHERE ` + heldBy("$7") + `
RETURNING r.event_id, r.handler_key`

// byKey is a CTE v of the rows named by the unnest expression u (which has
// event_id and handler_key columns), with their ctids in row_ctid. Each row
// is found through the primary key, in a LATERAL subquery whose LIMIT keeps
// the planner from turning the lookups into a scan of the whole table.
func byKey(unnest string) string {
	return `v AS MATERIALIZED (
    SELECT t.ctid AS row_ctid, u.*
    FROM ` + unnest + `
    CROSS JOIN LATERAL (
        SELECT ctid FROM inbox_records
        WHERE event_id = u.event_id AND handler_key = u.handler_key
        LIMIT 1
    ) t
)`
}

// heldBy is the condition, for an UPDATE of inbox_records r FROM byKey's v,
// that reaches v's rows by a TID scan and keeps those that worker owner
// still holds for v's attempt. A row updated concurrently fails it.
func heldBy(owner string) string {
	return `r.ctid = ANY (ARRAY(SELECT row_ctid FROM v))
  AND r.ctid = v.row_ctid
  AND r.status = 'progress'
  AND r.locked_by = ` + owner + `
  AND r.attempts = v.attempts`
}

// completeTxSQL marks one row done inside a TxHandler's transaction, under
// the same guard as completeSQL.
const completeTxSQL = `
UPDATE inbox_records
SET status = 'done', locked_by = NULL, updated_at = now()
WHERE event_id = $1 AND handler_key = $2
  AND status = 'progress' AND locked_by = $3 AND attempts = $4`

// releaseSQL hands rows whose handlers never started back to the queue,
// due now, without counting the attempt, and (when $5) wakes idle workers.
var releaseSQL = `
WITH ` + byKey(`unnest($1::uuid[], $2::text[], $3::int[]) AS u(event_id, handler_key, attempts)`) + `
UPDATE inbox_records AS r
SET status     = CASE WHEN r.attempts <= 1 THEN '' ELSE 'failed' END,
    attempts   = r.attempts - 1,
    locked_by  = NULL,
    due_at     = now(),
    updated_at = now()
FROM v
WHERE ` + heldBy("$4") + `
RETURNING ` + notifyIf("$5")

// renewSQL extends the leases worker $4 holds on the given rows and returns
// the rows it still holds.
var renewSQL = `
WITH ` + byKey(`unnest($1::uuid[], $2::text[], $3::int[]) AS u(event_id, handler_key, attempts)`) + `
UPDATE inbox_records AS r
SET due_at = now() + $5::bigint * interval '1 millisecond'
FROM v
WHERE ` + heldBy("$4") + `
RETURNING r.event_id, r.handler_key`

// eraseSQL deletes up to $2 done or dead rows last changed before $1.
// Rows another instance is deleting are skipped, so several instances may
// run retention at once.
const eraseSQL = `
DELETE FROM inbox_records
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM inbox_records
    WHERE status IN ('done', 'dead') AND updated_at < $1
    LIMIT $2
    FOR UPDATE SKIP LOCKED))`

const lookupSQL = `
SELECT event_id, event_type, handler_key, status, attempts, last_error,
       event_date, created_at, updated_at,
       CASE WHEN status IN ('', 'failed') THEN due_at END AS next_attempt_at
FROM inbox_records
WHERE event_id = $1
ORDER BY handler_key`

const countsSQL = `SELECT status, count(*) FROM inbox_records GROUP BY status`

// oldestDueSQL returns how long the oldest due row has waited, or null.
const oldestDueSQL = `
SELECT extract(epoch FROM now() - min(due_at))
FROM inbox_records
WHERE status IN ('', 'failed', 'progress') AND due_at <= now()`

const workerBeatSQL = `
INSERT INTO inbox_workers (id, hostname, pid, event_types, expires_at)
VALUES ($1, $2, $3, $4, now() + $5::bigint * interval '1 millisecond')
ON CONFLICT (id) DO UPDATE
SET beat_at = now(), expires_at = excluded.expires_at`

const workerPruneSQL = `DELETE FROM inbox_workers WHERE expires_at < now() - interval '1 hour'`

const workerDeleteSQL = `DELETE FROM inbox_workers WHERE id = $1`

const workersSQL = `
SELECT id, hostname, pid, event_types, started_at, beat_at
FROM inbox_workers
WHERE expires_at >= now()
ORDER BY started_at, id`

const tableCheckSQL = `SELECT to_regclass('inbox_records') IS NOT NULL`
