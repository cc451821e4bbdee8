package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// Ordered events. A ledger event carries an ordering key, "w<writer>-k<j>":
// each key is written by one writer, in increasing sequence numbers n
// (0, 1, 2, ...), its events interleaved with other keys' within a Set call
// and across calls, and redelivered among the duplicates like any event.
// Its two handlers check the order (see ledgerHandlers).
const (
	typeLedger          = "ledger"
	keyLedgerPlain      = "ledger-plain"
	keyLedgerTx         = "ledger-tx"
	ledgerKeysPerWriter = 10 // ordering keys per writer
)

// ledgerEvent is a ledger event's place: its ordering key and its sequence
// number in that key.
type ledgerEvent struct {
	key string
	n   int
}

// isLedger reports whether an event is a ledger event: about 1 in 4.
func isLedger(id uuid.UUID) bool { return id[14] < 0x40 }

// ledgerPlan returns the place of every ledger event among ids, which
// writers send as runWriter does: event i by writer i % writers, in the
// order of ids. Every process computes the same plan.
func ledgerPlan(ids []uuid.UUID, writers int) map[uuid.UUID]ledgerEvent {
	plan := make(map[uuid.UUID]ledgerEvent)
	next := make(map[string]int)
	for i, id := range ids {
		if !isLedger(id) {
			continue
		}
		key := fmt.Sprintf("w%d-k%d", i%writers, int(id[13])%ledgerKeysPerWriter)
		plan[id] = ledgerEvent{key: key, n: next[key]}
		next[key]++
	}
	return plan
}

// ledgerKeys returns each ordering key's events, by sequence number.
func ledgerKeys(plan map[uuid.UUID]ledgerEvent) map[string][]uuid.UUID {
	keys := make(map[string][]uuid.UUID)
	for id, ev := range plan {
		s := keys[ev.key]
		for len(s) <= ev.n {
			s = append(s, uuid.Nil)
		}
		s[ev.n] = id
		keys[ev.key] = s
	}
	return keys
}

// ledgerPayload is a ledger event's payload: "<event id> <key> <n>".
func ledgerPayload(id uuid.UUID, ev ledgerEvent) []byte {
	return fmt.Appendf(nil, "%s %s %d", id, ev.key, ev.n)
}

func parseLedger(payload []byte) (uuid.UUID, ledgerEvent, error) {
	f := strings.Fields(string(payload))
	if len(f) != 3 {
		return uuid.Nil, ledgerEvent{}, fmt.Errorf("ledger payload %q: want 3 fields", payload)
	}
	id, err := uuid.Parse(f[0])
	if err != nil {
		return uuid.Nil, ledgerEvent{}, fmt.Errorf("ledger payload %q: %w", payload, err)
	}
	n, err := strconv.Atoi(f[2])
	if err != nil {
		return uuid.Nil, ledgerEvent{}, fmt.Errorf("ledger payload %q: %w", payload, err)
	}
	return id, ledgerEvent{key: f[1], n: n}, nil
}

// failsFirst reports whether the ledger handler key fails the first
// attempt of this event's row: about 1 row in 5 of the plain handler and 1
// in 8 of the transactional one. Their retries hold back the key's later
// rows; the second attempt succeeds, so no ledger row ends dead (a dead
// row would park its key and the test could not drain).
func failsFirst(id uuid.UUID, handlerKey string) bool {
	if handlerKey == keyLedgerPlain {
		return id[12]%5 == 0
	}
	return id[11]%8 == 0
}

var errFirstAttempt = errors.New("chaos: the first attempt of this ledger row fails")

// ledgerHandlers returns the ledger event's handlers.
//
// The plain handler records each run's start in ledger_runs (at least once
// per row), then fails if failsFirst says so. The transactional handler
// inserts the event's effect in ledger_effects, in the transaction that
// marks its row done, and then fails (rolling the effect back) if
// failsFirst says so: exactly once per event. Both tables number their
// rows in insertion order, so verifyLedger can read the order each handler
// saw.
func ledgerHandlers(pool *pgxpool.Pool) (plain, tx inbox.Handler) {
	attempt := func(ctx context.Context) int {
		a, _ := inbox.AttemptFromContext(ctx)
		return a.Number
	}
	plain = inbox.HandlerFunc(keyLedgerPlain, func(ctx context.Context, payload []byte) error {
		id, ev, err := parseLedger(payload)
		if err != nil {
			return err
		}
		n := attempt(ctx)
		if _, err := pool.Exec(ctx, `INSERT INTO ledger_runs (ordering_key, n, event_id, attempt, pid) VALUES ($1, $2, $3, $4, $5)`,
			ev.key, ev.n, id, n, os.Getpid()); err != nil {
			return err
		}
		if n == 1 && failsFirst(id, keyLedgerPlain) {
			return errFirstAttempt
		}
		return nil
	})
	tx = inbox.TxHandlerFunc(keyLedgerTx, func(ctx context.Context, tx pgx.Tx, payload []byte) error {
		id, ev, err := parseLedger(payload)
		if err != nil {
			return err
		}
		n := attempt(ctx)
		if _, err := tx.Exec(ctx, `INSERT INTO ledger_effects (ordering_key, n, event_id, attempt, pid) VALUES ($1, $2, $3, $4, $5)`,
			ev.key, ev.n, id, n, os.Getpid()); err != nil {
			return err
		}
		if n == 1 && failsFirst(id, keyLedgerTx) {
			return errFirstAttempt
		}
		return nil
	})
	return plain, tx
}

// ledgerTables are the ledger handlers' side-effect tables: id is the
// insertion order.
const ledgerTables = `
CREATE TABLE ledger_runs (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ordering_key text        NOT NULL,
    n            integer     NOT NULL,
    event_id     uuid        NOT NULL,
    attempt      integer     NOT NULL,
    pid          integer     NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE ledger_effects (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ordering_key text        NOT NULL,
    n            integer     NOT NULL,
    event_id     uuid        NOT NULL,
    attempt      integer     NOT NULL,
    pid          integer     NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp()
);`

// inWriterOrder puts the new ledger records of a shuffled batch back in
// the writer's order (fresh gives each new event's place in it), keeping
// the positions the shuffle gave them: each key's new events then come in
// increasing sequence within the call, interleaved with other keys' and
// with duplicates.
func inWriterOrder(recs []*inbox.Record, fresh map[uuid.UUID]int) {
	var at []int
	var led []*inbox.Record
	for i, r := range recs {
		if _, ok := fresh[r.ID()]; ok && r.OrderingKey() != "" {
			at, led = append(at, i), append(led, r)
		}
	}
	slices.SortFunc(led, func(a, b *inbox.Record) int { return fresh[a.ID()] - fresh[b.ID()] })
	for i, r := range led {
		recs[at[i]] = r
	}
}

// ledgerResults are the counts verifyLedger reports.
type ledgerResults struct {
	events, keys         int
	runs, reruns         int
	effects              int
	failedFirst, retried int
}

// sideRow is a row of ledger_runs or ledger_effects.
type sideRow struct {
	id      int64
	key     string
	n       int
	eventID uuid.UUID
	attempt int
	pid     int
	at      time.Time
}

// verifyLedger checks the order of the ledger events: as stored, and as
// each handler saw them. states are the inbox rows; the other checks of
// the rows (each done, none twice) are verify's.
func verifyLedger(t *testing.T, ctx context.Context, pool *pgxpool.Pool, plan map[uuid.UUID]ledgerEvent, states map[rowKey]rowState) ledgerResults {
	t.Helper()
	keys := ledgerKeys(plan)
	res := ledgerResults{events: len(plan), keys: len(keys)}
	handlerKeys := []string{keyLedgerPlain, keyLedgerTx}

	// Stored: each row with its key, the key's rows in the writer's order.
	wrongKey := problems{what: "ledger rows without their ordering key"}
	misordered := problems{what: "ledger rows stored out of their key's order (seq not increasing with n)"}
	notFailed := problems{what: "ledger rows whose first attempt should have failed, done in one attempt"}
	for key, ids := range keys {
		for _, hk := range handlerKeys {
			var last int64
			for n, id := range ids {
				st, ok := states[rowKey{id, hk}]
				if !ok {
					continue // verify reports missing rows
				}
				if st.orderingKey != key {
					wrongKey.add("event %s handler %s: ordering key %q, want %q (n %d, status %s)", id, hk, st.orderingKey, key, n, st.status)
				}
				if !st.seq.Valid {
					misordered.add("%s/%s n %d (event %s): no seq", hk, key, n, id)
				} else {
					if n > 0 && st.seq.Int64 <= last {
						misordered.add("%s/%s n %d (event %s): seq %d, n %d had %d", hk, key, n, id, st.seq.Int64, n-1, last)
					}
					last = st.seq.Int64
				}
				if st.attempts > 1 {
					res.retried++
				}
				if failsFirst(id, hk) {
					res.failedFirst++
					if st.status == inbox.Done && st.attempts < 2 {
						notFailed.add("event %s handler %s: done after %d attempts", id, hk, st.attempts)
					}
				}
			}
		}
	}
	for _, p := range []*problems{&wrongKey, &misordered, &notFailed} {
		p.report(t)
	}

	// doneAt is when row n of key was done: the next row's handler may
	// only start after it.
	doneAt := func(hk, key string, n int) (time.Time, bool) {
		st, ok := states[rowKey{keys[key][n], hk}]
		return st.updatedAt, ok && st.status == inbox.Done
	}

	// Effects: per key, in insertion order, n = 0, 1, 2, ... each once,
	// each applied after the row before it was done.
	effects := readSide(t, ctx, pool, "ledger_effects")
	res.effects = len(effects)
	effectOrder := problems{what: "ledger effects out of order (per key, in insertion order, want n = 0, 1, 2, ... each once)"}
	effectEarly := problems{what: "ledger effects applied before the key's previous row was done"}
	effectStray := problems{what: "ledger effects of events never sent or with the wrong key or n"}
	seen := make(map[string]int) // effects so far per key
	for _, e := range effects {
		ev, ok := plan[e.eventID]
		if !ok || ev.key != e.key || ev.n != e.n {
			effectStray.add("effect %d: key %q n %d event %s (planned: %v %+v)", e.id, e.key, e.n, e.eventID, ok, ev)
			continue
		}
		if want := seen[e.key]; e.n != want {
			effectOrder.add("key %s: effect %d has n %d after %d effects (event %s, attempt %d, pid %d, at %s)",
				e.key, e.id, e.n, want, e.eventID, e.attempt, e.pid, e.at.Format(time.RFC3339Nano))
		}
		seen[e.key]++
		if e.n > 0 {
			if at, done := doneAt(keyLedgerTx, e.key, e.n-1); !done || !e.at.After(at) {
				effectEarly.add("key %s n %d: effect %d at %s; row n-1 %v at %s", e.key, e.n, e.id,
					e.at.Format(time.RFC3339Nano), done, at.Format(time.RFC3339Nano))
			}
		}
	}
	for key, ids := range keys {
		if seen[key] != len(ids) {
			effectOrder.add("key %s: %d effects for %d events", key, seen[key], len(ids))
		}
	}
	for _, p := range []*problems{&effectOrder, &effectEarly, &effectStray} {
		p.report(t)
	}

	// Runs: per key, in insertion order, n never goes back and never skips
	// a row (0, 0, 1, 2, 2, 2, 3, ...: a re-run of the same row may repeat
	// n), each row run no more often than it was attempted, and each run
	// started after the row before it was done.
	runs := readSide(t, ctx, pool, "ledger_runs")
	res.runs = len(runs)
	runOrder := problems{what: "ledger runs out of order (per key, in insertion order, n went back or skipped a row)"}
	runEarly := problems{what: "ledger runs started before the key's previous row was done"}
	runStray := problems{what: "ledger runs of events never sent or with the wrong key or n"}
	runCount := problems{what: "ledger plain rows run never, or more often than attempted"}
	lastN := make(map[string]int)
	perEvent := make(map[uuid.UUID]int)
	prev := make(map[string]sideRow)
	for _, r := range runs {
		ev, ok := plan[r.eventID]
		if !ok || ev.key != r.key || ev.n != r.n {
			runStray.add("run %d: key %q n %d event %s (planned: %v %+v)", r.id, r.key, r.n, r.eventID, ok, ev)
			continue
		}
		perEvent[r.eventID]++
		last, started := lastN[r.key]
		if !started {
			last = -1
		}
		if r.n < last || r.n > last+1 {
			after := "as the key's first run"
			if p, ok := prev[r.key]; ok {
				after = fmt.Sprintf("after run %d of n %d (attempt %d, pid %d, at %s)",
					p.id, p.n, p.attempt, p.pid, p.at.Format(time.RFC3339Nano))
			}
			runOrder.add("key %s: run %d of n %d (event %s, attempt %d, pid %d, at %s) %s",
				r.key, r.id, r.n, r.eventID, r.attempt, r.pid, r.at.Format(time.RFC3339Nano), after)
		}
		lastN[r.key], prev[r.key] = max(last, r.n), r
		if r.n > 0 {
			if at, done := doneAt(keyLedgerPlain, r.key, r.n-1); !done || !r.at.After(at) {
				runEarly.add("key %s n %d: run %d (attempt %d, pid %d) at %s; row n-1 done %v at %s", r.key, r.n, r.id,
					r.attempt, r.pid, r.at.Format(time.RFC3339Nano), done, at.Format(time.RFC3339Nano))
			}
		}
	}
	for id := range plan {
		st := states[rowKey{id, keyLedgerPlain}]
		switch n := perEvent[id]; {
		case n < 1:
			runCount.add("event %s (%+v): never ran; row %s after %d attempts", id, plan[id], st.status, st.attempts)
		case n > st.attempts:
			runCount.add("event %s (%+v): %d runs in %d attempts, last error %q", id, plan[id], n, st.attempts, st.lastError)
		}
		res.reruns += max(0, perEvent[id]-1)
	}
	for _, p := range []*problems{&runOrder, &runEarly, &runStray, &runCount} {
		p.report(t)
	}
	return res
}

// readSide reads a ledger side-effect table in insertion order.
func readSide(t *testing.T, ctx context.Context, pool *pgxpool.Pool, table string) []sideRow {
	t.Helper()
	rows, err := pool.Query(ctx, `SELECT id, ordering_key, n, event_id, attempt, pid, at FROM `+
		pgx.Identifier{table}.Sanitize()+` ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var out []sideRow
	var r sideRow
	if _, err := pgx.ForEachRow(rows, []any{&r.id, &r.key, &r.n, &r.eventID, &r.attempt, &r.pid, &r.at}, func() error {
		out = append(out, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// orderedBacklog describes the unfinished ledger rows, for the drain's
// progress reports.
func orderedBacklog(ctx context.Context, pool *pgxpool.Pool) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var unfinished, waiting int
	err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE due_at = 'infinity')
FROM inbox_records WHERE ordering_key IS NOT NULL AND status <> 'done'`).Scan(&unfinished, &waiting)
	if err != nil {
		return fmt.Sprintf("ordered rows: %v", err)
	}
	return fmt.Sprintf("ordered rows unfinished %d (%d waiting for their key)", unfinished, waiting)
}

// stuckKeys describes, for a drain that did not finish, the first
// unfinished row of up to 10 ordering keys.
func stuckKeys(ctx context.Context, pool *pgxpool.Pool) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := pool.Query(ctx, `
SELECT handler_key, ordering_key, seq, event_id, status, attempts, due_at::text, last_error,
       (SELECT count(*) FROM inbox_records w WHERE w.handler_key = h.handler_key
            AND w.ordering_key = h.ordering_key AND w.status <> 'done') AS unfinished
FROM (SELECT DISTINCT ON (handler_key, ordering_key) *
      FROM inbox_records WHERE ordering_key IS NOT NULL AND status <> 'done'
      ORDER BY handler_key, ordering_key, seq) h
ORDER BY unfinished DESC LIMIT 10`)
	if err != nil {
		return fmt.Sprintf("(stuck keys: %v)", err)
	}
	var b strings.Builder
	var hk, key, status, due, lastError string
	var seq, unfinished int64
	var id uuid.UUID
	var attempts int
	_, err = pgx.ForEachRow(rows, []any{&hk, &key, &seq, &id, &status, &attempts, &due, &lastError, &unfinished}, func() error {
		fmt.Fprintf(&b, "\n  %s/%s: %d unfinished, first seq %d event %s status %q attempts %d due %s last error %q",
			hk, key, unfinished, seq, id, status, attempts, due, lastError)
		return nil
	})
	if err != nil {
		return fmt.Sprintf("(stuck keys: %v)", err)
	}
	return b.String()
}
