package inbox

import (
	"strconv"
	"strings"
)

// Every statement the package runs. Table names are unqualified: the inbox
// lives in the schema the connection's search_path resolves to.
//
// Parameters are passed in forms that every pgx exec mode can encode, text
// as well as binary (uuids as pgtype.UUID, never as bare [16]byte), so the
// statements also work behind connection poolers that need pgx's exec or
// simple-protocol modes.

// setSQL stores rows, one per (record, handler key), in one statement; rows
// that exist already are left alone. Client sorts the rows by (event id,
// handler key) and drops repeats before sending them: the insert takes its
// unique-index locks in the order of the arrays (a function scan returns
// them in order), so concurrent Sets with overlapping rows always lock in
// the same order and cannot deadlock.
//
// $9 are the rows' trace contexts; a NULL array (no row has one) is
// padded with NULLs by unnest.
//
// It returns the rows it inserted. When asked to ($8), each inserted row
// notifies idle workers: PostgreSQL folds the identical notifications of a
// transaction into one, delivered at commit, and sends none when nothing
// was inserted.
var setSQL = `
INSERT INTO inbox_records (event_id, handler_key, event_type, payload, payload_hash, max_attempts, event_date, trace_context)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::int8[], $6::int4[], $7::timestamptz[], $9::text[])
ON CONFLICT (event_id, handler_key) DO NOTHING
RETURNING event_id, handler_key, CASE WHEN $8::bool THEN ` + notifySQL + ` END IS NULL`

// setOrderedSQL is setSQL for a call with ordering keys: $10 are the
// rows' ordering keys (NULL for none) and $11 their seq. A row with a key
// is stored waiting (due at 'infinity'); promoteSQL then makes the first
// of each key due. It runs after orderLockSQL took the call's keys.
var setOrderedSQL = `
INSERT INTO inbox_records (event_id, handler_key, event_type, payload, payload_hash, max_attempts, event_date, trace_context,
                           ordering_key, seq, due_at)
SELECT u.*, CASE WHEN u.ordering_key IS NULL THEN now() ELSE 'infinity' END
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::int8[], $6::int4[], $7::timestamptz[], $9::text[],
            $10::text[], $11::int8[])
     AS u(event_id, handler_key, event_type, payload, payload_hash, max_attempts, event_date, trace_context, ordering_key, seq)
ON CONFLICT (event_id, handler_key) DO NOTHING
RETURNING event_id, handler_key, CASE WHEN $8::bool THEN ` + notifySQL + ` END IS NULL`

// existingSQL returns the stored payload hash of each of the given rows
// that exists, by the rows' position in the arrays (from 1). It runs after
// setSQL, in a new snapshot, so it sees rows that concurrent Sets committed
// while setSQL waited for them. Each row is found through the primary key.
const existingSQL = `
SELECT u.i, t.payload_hash
FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS u(event_id, handler_key, i)
CROSS JOIN LATERAL (
    SELECT payload_hash FROM inbox_records
    WHERE event_id = u.event_id AND handler_key = u.handler_key
    LIMIT 1
) t`

// notifySQL notifies the table's channel; the payload is constant, so
// PostgreSQL folds a transaction's notifications into one.
const notifySQL = `pg_notify(` + channelExpr + `, '')`

// channelExpr names the notification channel of the inbox table in the
// current schema; a schema name too long for a channel is hashed.
const channelExpr = `(CASE WHEN octet_length(current_schema()) <= 49
    THEN current_schema() ELSE md5(current_schema()) END || '.inbox_records')`

const channelSQL = `SELECT ` + channelExpr

// probeSQL sends a notification with a payload, to check that a listening
// connection receives what is sent through the pool.
const probeSQL = `SELECT pg_notify(` + channelExpr + `, $1) IS NOT NULL`

// tidOnlySQL leaves the planner one way to reach rows of the table without
// a penalty: a TID fetch per row. completeSQL runs after it: joined to a few
// hundred ctids, the table could otherwise be scanned (sequentially, or
// through the due index when the statistics say few rows are in progress)
// and every pair compared.
const tidOnlySQL = `SELECT set_config('enable_seqscan', 'off', true), set_config('enable_indexscan', 'off', true),
       set_config('enable_bitmapscan', 'off', true), set_config('enable_hashjoin', 'off', true),
       set_config('enable_mergejoin', 'off', true), set_config('jit', 'off', true),
       set_config('plan_cache_mode', 'force_generic_plan', true)`

// keyOnlySQL leaves the planner one way to reach rows of the table without
// a penalty: a primary key lookup per row, for completeByKeySQL.
const keyOnlySQL = `SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true),
       set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true),
       set_config('jit', 'off', true), set_config('plan_cache_mode', 'force_generic_plan', true)`

// noFlushSQL makes the transaction it runs in commit without waiting for
// the WAL flush, and take the plan its statements were written for,
// whatever the table's statistics say. Claims and lease renewals run after it: if a
// database crash loses one, rows merely go back to their previous state and
// are claimed again, which the guarded result writes already allow for.
//
// With sorts disabled the claim walks the due index in order: planned from
// the statistics of an empty table (right after CREATE or TRUNCATE, before
// autoanalyze), it would otherwise sort every due row. The few sorts that
// remain (of the rows claimed) carry the planner's penalty for disabled
// nodes, which would push the plan's cost over jit_above_cost and spend
// half a second compiling it: JIT is off. With the plan fixed, a prepared
// statement is planned once, not at every run (plan_cache_mode).
const noFlushSQL = `SELECT set_config('synchronous_commit', 'off', true),
       set_config('enable_sort', 'off', true), set_config('jit', 'off', true),
       set_config('plan_cache_mode', 'force_generic_plan', true)`

// pausedSQL finds a pause (Admin.Pause) of the pair p(t, k).
const pausedSQL = `SELECT FROM inbox_pauses s WHERE s.event_type IN ('', p.t) AND s.handler_key IN ('', p.k)`

// claimSQL locks up to $3 due rows of the registered (event type, handler
// key) pairs $1, $2 that are not paused, oldest due first, skipping rows other workers hold,
// and leases them to worker $5 for $6 milliseconds, counting an attempt.
// A row whose lease expired (its worker died) is claimed again, its lost
// attempt recorded ($7); if it has used up its own max_attempts it becomes
// dead instead, owing its dead callback to $8 (NULL: no callback).
//
// The MATERIALIZED CTE cannot lock more due rows than the limit (chainSQL
// locks those of the chains, $10 at most). The update
// reaches the locked rows by ctid = ANY(ARRAY(...)), a TID scan whatever
// plan the statement gets: a join back to the table could be planned as a
// scan of the whole table. The last column says whether the row was
// rescued (its lease had expired); it is computed row by row only when the
// claim rescued any.
//
// Payloads come back only when those of the whole claim add up to at most
// $4 bytes; otherwise the last column says they were withheld, and each is
// read when its handler starts (payloadSQL), so that a claim of large
// payloads never holds more than the running handlers' in memory. The new
// ctid of each row lets its result be written without an index lookup.
//
// claimCappedSQL is the same with per-pair caps: of the locked rows it
// claims, in due order, at most $11[i] rows of pair i (a handler's free
// concurrency) and releases the others at commit. Whenever a row is locked
// one is claimed: the oldest due row is within every cap (a pair with no
// free concurrency is not passed at all); so it is for claimLimitedSQL,
// unless every row locked is of keys whose room is smaller.
//
// A row with an ordering key is claimed only while no earlier row of its
// (handler key, ordering key) is unfinished or parked dead: the first of
// its key. Later rows wait outside the due range (promoteSQL makes each
// due in turn), so the claim seldom meets one; the check makes sure.
// Behind each first row of a key it claims, the claim also leases up to
// $9 of the rows that wait behind it, in the key's order, $10 in all
// (chainSQL): the worker runs each once the one before it is done. These
// take no part in the caps.
//
// claimLimitedSQL is claimCappedSQL with global limits too: of handler
// key $12[i], at most $13[i] rows in progress across every worker, those
// counted included. It runs after limitLockSQL took the limited keys'
// locks, in a new snapshot: the claims of a limited key take turns, and
// each sees every row the others claimed. A key with no room left is not
// looked at at all, so that its backlog, however old, never fills the
// claim's window and holds up the other handlers' rows; a key with some
// room may have more rows locked than it can take, released at commit.
var claimSQL = claimWith(false, false)

var claimCappedSQL = claimWith(true, false)

var claimLimitedSQL = claimWith(true, true)

// claimWith builds claimSQL, claimCappedSQL (capped) or claimLimitedSQL
// (capped and limited).
func claimWith(capped, limited bool) string {
	from, picked, unlimited := "due", "", ""
	if limited {
		// A blocked row would count against its handler's global limit.
		unlimited = " AND handler_key <> ALL ($12::text[])"
	}
	with, full := "WITH ", ""
	if capped {
		within, byKey := "", ""
		if limited {
			with = `WITH room AS MATERIALIZED (
    SELECT l.k, greatest(l.n - (SELECT count(*) FROM inbox_records r
                                WHERE r.handler_key = l.k AND r.status = 'progress'), 0) AS n
    FROM unnest($12::text[], $13::int[]) AS l(k, n)
), `
			full = `
      AND handler_key <> ALL (ARRAY(SELECT k FROM room WHERE n = 0))`
			within = `
      AND d.nth_key <= coalesce((SELECT n FROM room WHERE room.k = d.handler_key), d.nth_key)`
			byKey = `,
               row_number() OVER (PARTITION BY handler_key ORDER BY due_at) AS nth_key`
		}
		from, picked = "picked", `, picked AS MATERIALIZED (
    SELECT d.* FROM (
        SELECT due.*, row_number() OVER (PARTITION BY event_type, handler_key ORDER BY due_at) AS nth`+byKey+`
        FROM due
    ) d
    JOIN unnest($1::text[], $2::text[], $11::int[]) AS p(event_type, handler_key, cap)
      ON p.event_type = d.event_type AND p.handler_key = d.handler_key
    WHERE d.nth <= p.cap`+within+`
)`
	}
	return `
` + with + `due AS MATERIALIZED (
    SELECT ctid, event_id, handler_key, event_type, status, due_at, octet_length(payload) AS size,
           ordering_key, seq, attempts < max_attempts AS lives
    FROM inbox_records AS f
    WHERE status IN ('', 'failed', 'progress')
      AND due_at <= now()` + full + `
      AND (event_type, handler_key) IN (SELECT * FROM unnest($1::text[], $2::text[]) AS p(t, k)
                                        WHERE NOT EXISTS (` + pausedSQL + `))
      AND (ordering_key IS NULL OR NOT EXISTS (
            SELECT FROM inbox_records e
            WHERE e.handler_key = f.handler_key AND e.ordering_key = f.ordering_key
              AND e.seq < f.seq AND e.status <> 'done'))
    ORDER BY due_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)` + picked + strings.NewReplacer("{from}", from, "{unlimited}", unlimited).Replace(chainSQL) + `, inline AS MATERIALIZED (
    SELECT coalesce(sum(size), 0) <= $4 AS ok FROM (SELECT size FROM ` + from + ` UNION ALL SELECT size FROM chain) s
), rescues AS MATERIALIZED (
    SELECT coalesce(bool_or(status = 'progress'), false) AS any_rescued FROM ` + from + `
), claimed AS (
    UPDATE inbox_records AS r
    SET status           = CASE WHEN r.attempts >= r.max_attempts THEN 'dead' ELSE 'progress' END,
        attempts         = CASE WHEN r.attempts >= r.max_attempts THEN r.attempts ELSE r.attempts + 1 END,
        claims           = r.claims + 1,
        last_error       = CASE WHEN r.status = 'progress'
                                THEN 'attempt ' || r.attempts || ': ' || $7::text
                                ELSE r.last_error END,
        error_type       = CASE WHEN r.status = 'progress' THEN '` + leaseExpiredType + `' ELSE r.error_type END,
        locked_by        = CASE WHEN r.attempts >= r.max_attempts THEN NULL ELSE $5::uuid END,
        dead_callback_by = CASE WHEN r.attempts >= r.max_attempts THEN $8::uuid END,
        due_at           = CASE WHEN r.attempts >= r.max_attempts THEN r.due_at
                                ELSE now() + $6::bigint * interval '1 millisecond' END,
        updated_at       = now()
    WHERE r.ctid = ANY (ARRAY(SELECT ctid FROM ` + from + ` UNION ALL SELECT ctid FROM chain))
    RETURNING (SELECT count(*) FROM due), r.ctid, r.event_id, r.event_type, r.handler_key,
              CASE WHEN (SELECT ok FROM inline) THEN r.payload END, r.attempts, r.claims, r.max_attempts,
              r.status, r.last_error, r.created_at, r.trace_context, r.ordering_key, r.seq, NOT (SELECT ok FROM inline),
              (SELECT any_rescued FROM rescues)
              AND EXISTS (SELECT FROM due d WHERE d.status = 'progress'
                          AND d.event_id = r.event_id AND d.handler_key = r.handler_key)
)
SELECT * FROM claimed`
}

// chainSQL finds, behind each first row of an ordering key in {from} (the
// rows a claim takes) that lives on (is not claimed dead) and whose
// handler has no global limit ({unlimited}), up to $9 of the
// rows of its key that follow it in order, $10 in all (the oldest keys
// first), and locks them: the longest run of rows that each wait (stored,
// not made due), none skipped for a lock another transaction holds. A row
// that does not wait (in progress elsewhere, failed, dead) ends the run.
// The lookup reads the order index from the first row on; the lock
// rechecks that each row still waits.
const chainSQL = `, heads AS MATERIALIZED (
    SELECT ctid, handler_key, ordering_key, seq, due_at FROM {from}
    WHERE ordering_key IS NOT NULL AND lives AND $10::int > 0{unlimited}
), run AS MATERIALIZED (
    SELECT ctid, size, head, n FROM (
        SELECT x.*, h.ctid AS head, h.due_at,
               row_number() OVER (PARTITION BY h.ctid ORDER BY x.seq) AS n,
               bool_and(x.waits) OVER (PARTITION BY h.ctid ORDER BY x.seq) AS all_wait
        FROM heads h CROSS JOIN LATERAL (
            SELECT r.ctid, r.seq, octet_length(r.payload) AS size,
                   (r.status = '' AND r.due_at = 'infinity' AND r.attempts < r.max_attempts) AS waits
            FROM inbox_records r
            WHERE r.handler_key = h.handler_key AND r.ordering_key = h.ordering_key
              AND r.seq > h.seq AND r.status <> 'done'
            ORDER BY r.seq
            LIMIT $9
        ) x
    ) c
    WHERE all_wait
    ORDER BY due_at, head, n
    LIMIT $10
), locked AS MATERIALIZED (
    SELECT ctid FROM inbox_records
    WHERE ctid = ANY (ARRAY(SELECT ctid FROM run))
      AND (status = '' AND due_at = 'infinity') IS TRUE -- not an index condition: a TID scan
    FOR UPDATE SKIP LOCKED
), chain AS MATERIALIZED (
    SELECT ctid, size FROM (
        SELECT r.ctid, r.size, bool_and(l.ctid IS NOT NULL) OVER (PARTITION BY r.head ORDER BY r.n) AS all_locked
        FROM run r LEFT JOIN locked l ON l.ctid = r.ctid
    ) c
    WHERE all_locked
)`

// payloadSQL reads the payload of a row that worker $3 holds for its claim
// $4, for a claim that withheld it.
const payloadSQL = `
SELECT payload FROM inbox_records
WHERE event_id = $1 AND handler_key = $2 AND status = 'progress' AND locked_by = $3 AND claims = $4`

// completeSQL writes the results of many attempts in one statement: done,
// failed with its next due time, dead, or handed back unstarted. Each row
// is reached by the ctid its claim (or latest renewal) returned, $1 (run
// after tidOnlySQL, the only plan without a disabled node is a TID fetch per
// row), and written only while worker $10 still holds it for that claim, $4
// (claims only grow), so a late writer never overwrites a newer attempt. A NULL error or due time keeps
// the stored one; $7[i] false takes back the attempt the claim counted (a
// row handed back unstarted, or a handler that asked to retry later); $11
// are the errors' types (NULL keeps the stored one). A
// row that becomes dead owes its dead callback to $9 (NULL: no callback).
// It returns the positions (from 1) of the rows written. A row updated since its ctid was read (its
// lease renewed meanwhile) has moved and is missed; completeByKeySQL writes
// such rows.
var completeSQL = `
UPDATE inbox_records AS r
SET ` + completeSet("$9") + `
FROM unnest($1::tid[], $2::uuid[], $3::text[], $4::int[], $5::text[], $6::text[], $7::bool[], $8::timestamptz[], $11::text[])
     WITH ORDINALITY AS v(row_ctid, event_id, handler_key, claims, status, last_error, counted, due_at, error_type, i)
WHERE r.ctid = v.row_ctid AND r.event_id = v.event_id AND r.handler_key = v.handler_key
  AND r.status = 'progress' AND r.locked_by = $10::uuid AND r.claims = v.claims
RETURNING v.i`

// completeByKeySQL is completeSQL for the rows it missed, each found
// through the primary key by $1 event id and $2 handler key (run after
// keyOnlySQL: an index lookup per row), with the other arguments shifted
// by one ($10: the errors' types). A row updated meanwhile is written too: the lookup's conditions
// are checked again on its new version.
var completeByKeySQL = `
UPDATE inbox_records AS r
SET ` + completeSet("$8") + `
FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[], $6::bool[], $7::timestamptz[], $10::text[])
     WITH ORDINALITY AS v(event_id, handler_key, claims, status, last_error, counted, due_at, error_type, i)
WHERE r.event_id = v.event_id AND r.handler_key = v.handler_key
  AND r.status = 'progress' AND r.locked_by = $9::uuid AND r.claims = v.claims
RETURNING v.i`

// completeSet is the SET list of the complete statements, for an update
// FROM v; deadBy is the parameter naming the worker that owes the dead
// callback.
func completeSet(deadBy string) string {
	return `status           = v.status,
    attempts         = CASE WHEN v.counted THEN r.attempts ELSE r.attempts - 1 END,
    last_error       = coalesce(v.last_error, r.last_error),
    error_type       = coalesce(v.error_type, r.error_type),
    due_at           = coalesce(v.due_at, r.due_at),
    locked_by        = NULL,
    dead_callback_by = CASE WHEN v.status = 'dead' THEN ` + deadBy + `::uuid END,
    updated_at       = now()`
}

// completeTxSQL marks one row done inside a TxHandler's transaction, under
// the same guard as completeSQL.
const completeTxSQL = `
UPDATE inbox_records
SET status = 'done', locked_by = NULL, updated_at = now()
WHERE event_id = $1 AND handler_key = $2
  AND status = 'progress' AND locked_by = $3 AND claims = $4`

// renewSQL extends the leases worker $4 holds on the given rows (by their
// claims, $3), for $5 milliseconds. It never waits for a lock: a row
// another statement has locked (its result being written, a TxHandler
// committing) is skipped this time. It returns each renewed row with its
// new ctid, and each row that is no longer the worker's (gone, or claimed
// since) with a NULL ctid, both with the claim asked about. A row that is
// no longer in progress but still at the worker's claim was finished by
// this worker, and is not returned.
const renewSQL = `
WITH v AS MATERIALIZED (
    SELECT u.event_id, u.handler_key, u.claims, t.ctid AS row_ctid,
           t.status, t.locked_by, t.claims AS now_claims
    FROM unnest($1::uuid[], $2::text[], $3::int[]) AS u(event_id, handler_key, claims)
    LEFT JOIN LATERAL (
        SELECT ctid, status, locked_by, claims FROM inbox_records
        WHERE event_id = u.event_id AND handler_key = u.handler_key
        LIMIT 1
    ) t ON true
), mine AS MATERIALIZED (
    SELECT ctid FROM inbox_records
    WHERE ctid = ANY (ARRAY(
            SELECT row_ctid FROM v
            WHERE status = 'progress' AND locked_by = $4::uuid AND now_claims = claims))
      AND status = 'progress' AND locked_by = $4::uuid
    FOR UPDATE SKIP LOCKED
), renewed AS (
    UPDATE inbox_records
    SET due_at = now() + $5::bigint * interval '1 millisecond'
    WHERE ctid = ANY (ARRAY(SELECT ctid FROM mine))
    RETURNING event_id, handler_key, claims, ctid
)
SELECT event_id, handler_key, claims, ctid FROM renewed
UNION ALL
SELECT event_id, handler_key, claims, NULL
FROM v
WHERE row_ctid IS NULL
   OR now_claims <> claims
   OR (status = 'progress' AND locked_by <> $4::uuid)`

// deadCallbacksSQL returns up to $2 dead rows whose dead callback worker
// $1 owes, with what the callback needs and where the row is.
const deadCallbacksSQL = `
SELECT ctid, event_id, event_type, handler_key, attempts, last_error, claims
FROM inbox_records
WHERE dead_callback_by = $1::uuid AND status = 'dead'
LIMIT $2`

// deadCallbacksDoneSQL clears the debt of worker $4 for the dead callbacks
// of the given rows (ctid $1, event id $2, handler key $3), once the
// callbacks have returned. Run after tidOnlySQL: a TID fetch per row. A row
// that moved meanwhile keeps its mark, and its callback is delivered again.
const deadCallbacksDoneSQL = `
UPDATE inbox_records AS r SET dead_callback_by = NULL
FROM unnest($1::tid[], $2::uuid[], $3::text[]) AS v(row_ctid, event_id, handler_key)
WHERE r.ctid = v.row_ctid AND r.event_id = v.event_id AND r.handler_key = v.handler_key
  AND r.dead_callback_by = $4::uuid`

// adoptCallbacksSQL makes worker $1 owe the dead callbacks that workers
// without a live heartbeat still owed, for the (event type, handler key)
// pairs $2, $3 it runs, up to $4 rows at a time. Dead callbacks are thereby
// delivered at least once per row, even when the process that owed one
// crashed or stopped before delivering it.
const adoptCallbacksSQL = `
UPDATE inbox_records
SET dead_callback_by = $1::uuid
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM inbox_records
    WHERE dead_callback_by IS NOT NULL
      AND dead_callback_by <> $1::uuid
      AND status = 'dead'
      AND (event_type, handler_key) IN (SELECT * FROM unnest($2::text[], $3::text[]))
      AND NOT EXISTS (SELECT FROM inbox_workers w
                      WHERE w.id = dead_callback_by AND w.expires_at >= now())
    LIMIT $4
    FOR UPDATE SKIP LOCKED))`

// retentionLeaseSQL takes (or keeps) the lease on the retention task for
// worker $1, for $2 milliseconds, if the last run finished more than $3
// milliseconds ago and no other worker holds a live lease. It returns a
// row only when the lease is taken.
const retentionLeaseSQL = `
UPDATE inbox_maintenance
SET holder = $1::uuid, lease_until = now() + $2::bigint * interval '1 millisecond'
WHERE task = 'retention'
  AND (holder = $1::uuid
       OR ((last_run_at IS NULL OR last_run_at <= now() - $3::bigint * interval '1 millisecond')
           AND (lease_until IS NULL OR lease_until < now())))
RETURNING true`

// retentionDoneSQL records a finished retention run of worker $1.
const retentionDoneSQL = `
UPDATE inbox_maintenance
SET holder = NULL, lease_until = NULL, last_run_at = now()
WHERE task = 'retention' AND holder = $1::uuid`

// tableBlocksSQL is the number of blocks of the inbox table.
const tableBlocksSQL = `
SELECT pg_relation_size('inbox_records') / current_setting('block_size')::bigint`

// retentionChunkSQL applies retention to the blocks from $1 up to, not
// including, $2, reached by a TID range scan: it deletes done and dead rows
// last changed before $3 (the dedup window), and erases the payload of done
// rows last changed before $4 (the payload window) but not before $3. It
// returns the rows deleted and the payloads erased.
const retentionChunkSQL = `
WITH deleted AS (
    DELETE FROM inbox_records
    WHERE ctid >= $1::tid AND ctid < $2::tid
      AND status IN ('done', 'dead') AND updated_at < $3
    RETURNING 1
), erased AS (
    UPDATE inbox_records
    SET payload = NULL
    WHERE ctid >= $1::tid AND ctid < $2::tid
      AND status = 'done' AND payload IS NOT NULL
      AND updated_at < $4 AND updated_at >= $3
    RETURNING 1
)
SELECT (SELECT count(*) FROM deleted), (SELECT count(*) FROM erased)`

const lookupSQL = `
SELECT ` + rowColumns + `
FROM inbox_records
WHERE event_id = $1
ORDER BY handler_key`

// countsSQL returns the rows per status from the table's counters (see
// statsCountsSQL).
const countsSQL = `
SELECT status, sum(n)::bigint FROM (
    SELECT status, n FROM inbox_counts
    UNION ALL
    SELECT status, n FROM inbox_count_deltas
) c
GROUP BY status`

// oldestDueSQL returns how long the oldest due row has waited, or null.
const oldestDueSQL = `
SELECT extract(epoch FROM now() - min(due_at))::float8
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

// schemaSQL reports which of the inbox's tables exist in the current
// schema, and the latest migration recorded as applied (0 without the
// version table).
const schemaSQL = `
SELECT to_regclass('inbox_records') IS NOT NULL,
       to_regclass('inbox_workers') IS NOT NULL,
       to_regclass('inbox_maintenance') IS NOT NULL,
       to_regclass('` + VersionTable + `') IS NOT NULL`

const schemaVersionSQL = `SELECT coalesce(max(version_id), 0) FROM ` + VersionTable + ` WHERE is_applied`

const serverVersionSQL = `SELECT current_setting('server_version_num')::int, current_schema()`

// Ordered processing and global concurrency limits.

// Classes (first keys) of the transaction-level advisory locks that order
// Sets and finishes of the rows of one ordering key, and that make the
// claims of a handler with a global limit take turns. The second key is a
// hash of the schema and the ordering or handler key; keys that collide
// merely take turns too.
const (
	orderLockClass = 1768846959
	limitLockClass = 1768846960
)

// keyLocks takes the advisory locks of class on the keys $1 in the
// current schema, in ascending order: two transactions that lock keys in
// common never wait for each other in a cycle. It counts the distinct
// locks. A key's lock is one of lockBuckets, by a hash of the schema and
// the key: a transaction holds at most lockBuckets of them, however many
// keys it names (the server's lock table is shared and bounded,
// max_locks_per_transaction per connection), and keys that share a
// bucket merely take turns.
func keyLocks(class int) string {
	return `SELECT count(pg_advisory_xact_lock(` + strconv.Itoa(class) + `, h)) FROM (
    SELECT DISTINCT hashtext(current_schema() || '/' || k) & ` + strconv.Itoa(lockBuckets-1) + ` AS h
    FROM unnest($1::text[]) AS k ORDER BY 1
) s`
}

// lockBuckets is how many advisory locks of a class there are per schema.
const lockBuckets = 256

// orderLockSQL takes the locks of the ordering keys $1 (a Set, a finish
// or an operator's action on their rows holds them until it commits) and
// draws a new value of inbox_order_seq, for a Set's rows' seq: value *
// 2^20 + position in the call. Sets of one key thus take turns, and their
// rows' order is their commit order.
var orderLockSQL = `SELECT nextval('inbox_order_seq') FROM (` + keyLocks(orderLockClass) + `) l`

// orderLockOnlySQL takes the locks of the ordering keys $1.
var orderLockOnlySQL = keyLocks(orderLockClass)

// limitLockSQL takes the locks of the handler keys $1 that have a global
// concurrency limit, for claimLimitedSQL.
var limitLockSQL = keyLocks(limitLockClass)

// progressIndexSQL reports whether inbox_records_progress_idx, the index
// of rows in progress by handler key that claimLimitedSQL counts through,
// exists, and whether it is valid (a CONCURRENTLY build that failed
// half-way leaves an invalid one).
const progressIndexSQL = `
SELECT coalesce((SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass('inbox_records_progress_idx')), false),
       to_regclass('inbox_records_progress_idx') IS NOT NULL`

// progressBuildLockSQL and progressBuildUnlockSQL take and release the
// session advisory lock that lets one Inbox at a time build it (a key no
// keyLocks lock has).
var (
	progressBuildLockSQL   = `SELECT pg_try_advisory_lock(` + strconv.Itoa(limitLockClass) + `, -1)`
	progressBuildUnlockSQL = `SELECT pg_advisory_unlock(` + strconv.Itoa(limitLockClass) + `, -1)`
)

// dropProgressIndexSQL and createProgressIndexSQL rebuild it; they run
// outside a transaction, and Sets and workers go on meanwhile.
const (
	dropProgressIndexSQL   = `DROP INDEX CONCURRENTLY IF EXISTS inbox_records_progress_idx`
	createProgressIndexSQL = `CREATE INDEX CONCURRENTLY IF NOT EXISTS inbox_records_progress_idx
    ON inbox_records (handler_key) WHERE status = 'progress'`
)

// promoteSQL makes due the first row of each (handler key $1[i], ordering
// key $2[i]) if it waits: the row after one that finished. With $3[i], the
// key's dead rows first leave its order (their ordering key is cleared), so
// that the key moves on past them: an operator's skip, or a handler that
// moves on past dead rows. Run it after orderLockSQL (or orderLockOnlySQL)
// took the keys, in a statement of its own: its snapshot then holds every
// row that Sets of
// these keys committed, and no Set of them runs until this transaction
// ends. Whichever of a Set and a finish takes a key's lock second sees
// what the first did: the Set stores its row due when the row before it
// finished, or the finish makes the Set's row due. With $4, a row made due
// notifies idle workers (at commit). The lookup of key i's row starts
// after seq $5[i] (-1: at the key's first row): after the row that
// finished, not at the key's first rows (finished rows leave entries in
// the order index until vacuum removes them). A row before it that is
// unfinished (a replayed one) still holds the next back: the claim checks.
var promoteSQL = `
WITH k AS MATERIALIZED (
    SELECT DISTINCT h, o, skip, after
    FROM unnest($1::text[], $2::text[], $3::bool[], $5::int8[]) AS k(h, o, skip, after)
), skipped AS (
    UPDATE inbox_records d SET ordering_key = NULL, updated_at = now()
    WHERE d.ctid = ANY (ARRAY(
            SELECT x.ctid FROM k CROSS JOIN LATERAL (
                SELECT r.ctid FROM inbox_records r
                WHERE r.handler_key = k.h AND r.ordering_key = k.o AND r.status = 'dead'
                OFFSET 0) x -- not pulled up: an index lookup per key
            WHERE k.skip))
      AND d.status = 'dead' AND d.ordering_key IS NOT NULL
    RETURNING d.event_id
), head AS MATERIALIZED (
    SELECT (SELECT r.ctid FROM inbox_records r
            WHERE r.handler_key = k.h AND r.ordering_key = k.o AND r.status <> 'done'
              AND r.seq > k.after
              AND NOT (k.skip AND r.status = 'dead')
            ORDER BY r.seq LIMIT 1) AS row_ctid
    FROM k
), promoted AS (
    UPDATE inbox_records r SET due_at = now(), updated_at = now()
    WHERE r.ctid = ANY (ARRAY(SELECT row_ctid FROM head WHERE row_ctid IS NOT NULL))
      AND (r.status = '' AND r.due_at = 'infinity') IS TRUE -- not an index condition: a TID scan
    RETURNING 1
)
SELECT (SELECT count(*) FROM skipped), (SELECT count(*) FROM promoted),
       CASE WHEN $4::bool AND EXISTS (SELECT FROM promoted) THEN ` + notifySQL + ` END IS NULL`

// strandedSQL finds up to $1 keys whose first row waits although nothing
// is before it: its predecessor was deleted (Admin.Delete, retention of a
// parked dead row) or died under a handler that moves on, in a worker
// that stopped before it could make the next due. Maintenance promotes
// them. It reads the whole order index: it runs with retention.
const strandedSQL = `
SELECT handler_key, ordering_key FROM (
    SELECT DISTINCT ON (handler_key, ordering_key) handler_key, ordering_key, status, due_at
    FROM inbox_records
    WHERE ordering_key IS NOT NULL AND status <> 'done'
    ORDER BY handler_key, ordering_key, seq
) h
WHERE status = '' AND due_at = 'infinity'
LIMIT $1`

// skipHistorySQL records, for the dead rows of (handler key $1, ordering
// key $2) that are about to leave its order, that operator $3 skipped them
// for reason $4. Run before promoteSQL, in its transaction.
const skipHistorySQL = `
INSERT INTO inbox_history (event_id, handler_key, kind, attempt, actor, text)
SELECT event_id, handler_key, 'skipped', attempts, $3, $4 FROM inbox_records
WHERE handler_key = $1 AND ordering_key = $2 AND status = 'dead'`

// keyDeadSQL counts the dead rows of (handler key $1, ordering key $2).
const keyDeadSQL = `
SELECT count(*) FROM inbox_records WHERE handler_key = $1 AND ordering_key = $2 AND status = 'dead'`

// parkedSQL lists up to $1 parked keys: each (handler key, ordering key)
// whose first unfinished row is dead, with that row, when it died, and how
// many rows of the key wait behind it; most waiting first.
const parkedSQL = `
SELECT d.handler_key, d.ordering_key, d.event_id, d.event_type, d.updated_at,
       (SELECT count(*) FROM inbox_records w
        WHERE w.handler_key = d.handler_key AND w.ordering_key = d.ordering_key
          AND w.status <> 'done' AND w.seq > d.seq) AS waiting
FROM inbox_records d
WHERE d.status = 'dead' AND d.ordering_key IS NOT NULL
  AND NOT EXISTS (SELECT FROM inbox_records e
                  WHERE e.handler_key = d.handler_key AND e.ordering_key = d.ordering_key
                    AND e.status <> 'done' AND e.seq < d.seq)
ORDER BY waiting DESC, d.updated_at, d.handler_key, d.ordering_key
LIMIT $1`

// backfillPickSQL returns the next events (up to $5) of event type $1
// stored at or after $2 (their first row: a row backfilled later does not
// make an event newer), after event id $3, in event id order: for each,
// whether one of its rows still holds the payload, whether handler $4 has
// a row of it already, and its ordering key. It walks the primary key.
const backfillPickSQL = `
SELECT event_id, bool_or(payload IS NOT NULL), bool_or(handler_key = $4), max(ordering_key)
FROM inbox_records
WHERE event_id > $3 AND event_type = $1
GROUP BY event_id
HAVING min(created_at) >= $2
ORDER BY event_id
LIMIT $5`

// backfillSQL stores a row of handler $2 (at most $3 attempts) for each
// event $1 of event type $4 that has none, copied from one of the event's
// rows that still holds the payload: same payload, event date, trace
// context and place in its ordering key's order. A row with an ordering key
// is stored waiting, as Set stores it; promoteSQL makes the first due.
const backfillSQL = `
INSERT INTO inbox_records (event_id, handler_key, event_type, payload, payload_hash, max_attempts, event_date, trace_context,
                           ordering_key, seq, due_at)
SELECT DISTINCT ON (event_id) event_id, $2, event_type, payload, payload_hash, $3, event_date, trace_context,
       ordering_key, seq, CASE WHEN ordering_key IS NULL THEN now() ELSE 'infinity' END
FROM inbox_records
WHERE event_id = ANY ($1::uuid[]) AND event_type = $4 AND payload IS NOT NULL
ORDER BY event_id, created_at
ON CONFLICT (event_id, handler_key) DO NOTHING`

// Operations ([Admin]).

// foldLockSQL lets one fold of the counters run at a time per schema; the
// others skip theirs (what they would fold is read unfolded meanwhile).
const foldLockSQL = `SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.inbox_count_deltas'))`

// foldSQL folds the counting trigger's deltas into inbox_counts and
// inbox_throughput, and forgets throughput older than two hours. It
// returns the deltas folded.
const foldSQL = `
WITH d AS (
    DELETE FROM inbox_count_deltas RETURNING event_type, handler_key, status, n, finished, at
), c AS (
    INSERT INTO inbox_counts AS c (event_type, handler_key, status, n)
    SELECT event_type, handler_key, status, sum(n) FROM d GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (event_type, handler_key, status) DO UPDATE SET n = c.n + excluded.n
), t AS (
    INSERT INTO inbox_throughput AS t (event_type, handler_key, minute, done, dead)
    SELECT event_type, handler_key, date_trunc('minute', at),
           coalesce(sum(finished) FILTER (WHERE status = 'done'), 0),
           coalesce(sum(finished) FILTER (WHERE status = 'dead'), 0)
    FROM d WHERE finished > 0 AND at > now() - interval '2 hours'
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (event_type, handler_key, minute)
    DO UPDATE SET done = t.done + excluded.done, dead = t.dead + excluded.dead
), old AS (
    DELETE FROM inbox_throughput WHERE minute < now() - interval '2 hours'
)
SELECT count(*) FROM d`

// statsCountsSQL returns the rows per (event type, handler key, status):
// the folded counts plus the deltas not folded yet, in one snapshot.
const statsCountsSQL = `
SELECT event_type, handler_key, status, sum(n)::bigint FROM (
    SELECT event_type, handler_key, status, n FROM inbox_counts
    UNION ALL
    SELECT event_type, handler_key, status, n FROM inbox_count_deltas
) c
GROUP BY 1, 2, 3
HAVING sum(n) <> 0`

// statsLagSQL returns, per pair, how long its oldest due row that is not
// in progress has waited, in seconds. It reads the due rows only (through
// inbox_records_due_idx): its cost grows with the backlog, not with the
// finished rows kept.
const statsLagSQL = `
SELECT event_type, handler_key, extract(epoch FROM now() - min(due_at))::float8
FROM inbox_records
WHERE status IN ('', 'failed', 'progress') AND status <> 'progress' AND due_at <= now()
GROUP BY 1, 2`

// statsThroughputSQL returns the rows finished per pair and minute since
// $1, folded or not.
const statsThroughputSQL = `
SELECT event_type, handler_key, minute, sum(done)::bigint, sum(dead)::bigint FROM (
    SELECT event_type, handler_key, minute, done, dead FROM inbox_throughput WHERE minute >= $1
    UNION ALL
    SELECT event_type, handler_key, date_trunc('minute', at),
           CASE WHEN status = 'done' THEN finished ELSE 0 END,
           CASE WHEN status = 'dead' THEN finished ELSE 0 END
    FROM inbox_count_deltas WHERE finished > 0 AND at >= $1
) t
GROUP BY 1, 2, 3`

// Backpressure (WithMaxBacklog).

// backlogSQL returns, for each of the event types $1 that has any, its
// rows not finished (pending, failed or in progress, over all its handler
// keys) as statsCountsSQL counts them: the folded counts plus the deltas
// not folded yet, in one snapshot, without reading inbox_records. A last
// row with a NULL event type gives the number of unfolded delta rows (of
// any type), for the reader to fold them when they pile up.
const backlogSQL = `
WITH d AS MATERIALIZED (
    SELECT event_type, status, n FROM inbox_count_deltas
)
SELECT event_type, sum(n)::bigint FROM (
    SELECT event_type, n FROM inbox_counts
    WHERE event_type = ANY ($1::text[]) AND status IN ('', 'failed', 'progress')
    UNION ALL
    SELECT event_type, n FROM d
    WHERE event_type = ANY ($1::text[]) AND status IN ('', 'failed', 'progress')
) c
GROUP BY 1
UNION ALL
SELECT NULL, count(*) FROM d`

const nowSQL = `SELECT now()`

const versionTableSQL = `SELECT to_regclass('` + VersionTable + `') IS NOT NULL`

const pausesSQL = `
SELECT event_type, handler_key, paused_at, actor, reason FROM inbox_pauses ORDER BY 1, 2`

const pauseSQL = `
INSERT INTO inbox_pauses (event_type, handler_key, actor, reason) VALUES ($1, $2, $3, $4)
ON CONFLICT (event_type, handler_key) DO UPDATE SET actor = excluded.actor, reason = excluded.reason`

const resumeSQL = `DELETE FROM inbox_pauses WHERE event_type = $1 AND handler_key = $2`

// rowColumns are the columns of a row that [RecordState] holds, for the
// statements that return rows.
const rowColumns = `event_id, event_type, handler_key, status, attempts, max_attempts, last_error,
       payload IS NULL, event_date, created_at, updated_at,
       CASE WHEN status IN ('', 'failed') AND due_at <> 'infinity' THEN due_at END, coalesce(error_type, ''),
       coalesce(ordering_key, ''), status = '' AND due_at = 'infinity'`

// normalisedErrorExpr is a row's last error with what varies from one
// occurrence of a failure to the next replaced by placeholders: uuids by
// <uuid>; words of hex digits with at least one decimal digit (numbers,
// hex ids, 0x2e) and the numbers left in other words by <n>. "timeout
// after 10s on order 123" and "timeout after 5s on order 456" both become
// "timeout after <n>s on order <n>".
const normalisedErrorExpr = `regexp_replace(regexp_replace(regexp_replace(left(last_error, 1024),
    '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}', '<uuid>', 'g'),
    '\m(0x)?[0-9a-fA-F]*[0-9][0-9a-fA-F]*\M', '<n>', 'g'),
    '[0-9]+([.,][0-9]+)*', '<n>', 'g')`

// fingerprintExpr groups a dead row with the others of its pair that
// failed the same way: the same error type and normalised error.
const fingerprintExpr = `left(md5(event_type || chr(31) || handler_key || chr(31) || coalesce(error_type, '') || chr(31) || ` +
	normalisedErrorExpr + `), 16)`

// fingerprintOfPatternExpr is fingerprintExpr for a row whose normalised
// error is at hand as pattern.
const fingerprintOfPatternExpr = `left(md5(event_type || chr(31) || handler_key || chr(31) || error_type || chr(31) || pattern), 16)`

// deadGroupsSQLFormat groups the dead rows matching a filter (%s: the
// WHERE conditions) by fingerprint, largest group first, with the error of
// one of each group's rows as its sample (fetched by ctid); $1 limits the
// groups. Each row's error is normalised once.
const deadGroupsSQLFormat = `
WITH n AS (
    SELECT event_type, handler_key, coalesce(error_type, '') AS error_type,
           ` + normalisedErrorExpr + ` AS pattern, updated_at, ctid
    FROM inbox_records
    WHERE %s
), groups AS (
    SELECT event_type, handler_key, error_type, pattern, count(*) AS n,
           min(updated_at) AS first_seen, max(updated_at) AS last_seen, max(ctid) AS sample
    FROM n GROUP BY 1, 2, 3, 4
)
SELECT ` + fingerprintOfPatternExpr + `, event_type, handler_key, error_type, pattern, n, first_seen, last_seen,
       coalesce((SELECT r.last_error FROM inbox_records r WHERE r.ctid = sample), '')
FROM groups
ORDER BY n DESC, last_seen DESC, 1
LIMIT $1`

// showPayloadSQL returns the payload of an event from one of its rows that
// still holds it.
const showPayloadSQL = `
SELECT payload FROM inbox_records WHERE event_id = $1 AND payload IS NOT NULL LIMIT 1`

const historySQL = `
SELECT handler_key, at, kind, attempt, actor, text FROM inbox_history
WHERE event_id = $1 ORDER BY at, handler_key`

// listSQLFormat lists the rows matching a filter (%s: the WHERE
// conditions, including the keyset's), newest change first; %s: the limit
// parameter.
const listSQLFormat = `
SELECT ` + rowColumns + `
FROM inbox_records
WHERE %s
ORDER BY updated_at DESC, event_id DESC, handler_key DESC
LIMIT %s`

const countSQLFormat = `SELECT count(*) FROM inbox_records WHERE %s`

// pickSQLFormat selects (and locks) a batch of the rows matching a filter
// for a bulk action, %s: the conditions, %s: the limit parameter; rows in
// progress are leased to a worker and never picked. Rows are locked in
// ctid order, as retention and the dead callbacks' statements lock them,
// so that they cannot deadlock with each other.
const pickSQLFormat = `picked AS MATERIALIZED (
    SELECT ctid, event_id, handler_key, attempts FROM inbox_records
    WHERE %s AND status <> 'progress'
    ORDER BY ctid
    LIMIT %s
    FOR UPDATE
)`

// replayBatchSQLFormat makes a batch of picked rows (%s: the pick) due
// now with their attempts reset, and records who did it and why ($1, $2).
const replayBatchSQLFormat = `
WITH %s, replayed AS (
    UPDATE inbox_records AS r
    SET status = '', attempts = 0, due_at = now(), dead_callback_by = NULL, updated_at = now()
    WHERE r.ctid = ANY (ARRAY(SELECT ctid FROM picked))
    RETURNING r.event_id, r.handler_key
), audit AS (
    INSERT INTO inbox_history (event_id, handler_key, kind, attempt, actor, text)
    SELECT p.event_id, p.handler_key, 'replayed', p.attempts, $1, $2
    FROM picked p JOIN replayed r USING (event_id, handler_key)
)
SELECT count(*) FROM replayed`

// discardBatchSQLFormat makes a batch of picked rows (%s: the pick) dead,
// with the reason as their error ($1), without a dead callback (a dead row
// keeps one it was still owed).
const discardBatchSQLFormat = `
WITH %s, discarded AS (
    UPDATE inbox_records AS r
    SET status = 'dead', last_error = $1, error_type = 'inbox.discarded',
        dead_callback_by = CASE WHEN r.status = 'dead' THEN r.dead_callback_by END,
        updated_at = now()
    WHERE r.ctid = ANY (ARRAY(SELECT ctid FROM picked))
    RETURNING 1
)
SELECT count(*) FROM discarded`

// deleteBatchSQLFormat deletes a batch of picked rows (%s: the pick) with
// their history.
const deleteBatchSQLFormat = `
WITH %s, deleted AS (
    DELETE FROM inbox_records AS r
    WHERE r.ctid = ANY (ARRAY(SELECT ctid FROM picked))
    RETURNING r.event_id, r.handler_key
), history AS (
    DELETE FROM inbox_history h USING deleted d
    WHERE h.event_id = d.event_id AND h.handler_key = d.handler_key
)
SELECT count(*) FROM deleted`

// historyRetentionSQL deletes up to $2 history entries older than $1.
const historyRetentionSQL = `
DELETE FROM inbox_history
WHERE ctid = ANY (ARRAY(SELECT ctid FROM inbox_history WHERE at < $1 LIMIT $2))`

// actorSQL names the operator acting in the transaction, for the history
// the counting trigger writes.
const actorSQL = `SELECT set_config('inbox.actor', $1, true)`

// wakeSQL wakes idle workers, as a stored row does.
const wakeSQL = `SELECT ` + notifySQL
