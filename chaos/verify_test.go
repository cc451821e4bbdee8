package chaos_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// rowKey identifies an inbox row.
type rowKey struct {
	id  uuid.UUID
	key string
}

type rowState struct {
	eventType   string
	status      inbox.Status
	attempts    int
	lastError   string
	orderingKey string // "" for none
	seq         pgtype.Int8
	updatedAt   time.Time
}

// results are the counts verify reports.
type results struct {
	rows, dead, rescued               int
	attempts, retriedDone             int
	maxDoneAttempts, maxAttempts      int
	plainRuns, plainDone, plainReruns int
	effects, txRows                   int
	ledger                            ledgerResults
}

// problems collects failures of one kind, keeping the first few examples.
type problems struct {
	what     string
	n        int
	examples []string
}

func (p *problems) add(format string, args ...any) {
	p.n++
	if len(p.examples) < 10 {
		p.examples = append(p.examples, fmt.Sprintf(format, args...))
	}
}

func (p *problems) report(t *testing.T) {
	t.Helper()
	if p.n > 0 {
		t.Errorf("%s: %d, for example:\n  %s", p.what, p.n, strings.Join(p.examples, "\n  "))
	}
}

// verify checks the tables against the events sent and returns the counts.
// plan places the ledger events among ids.
func verify(t *testing.T, ctx context.Context, pool *pgxpool.Pool, ids []uuid.UUID, plan map[uuid.UUID]ledgerEvent,
	acked map[uuid.UUID]bool) results {
	t.Helper()
	var res results
	expected := make(map[uuid.UUID]bool, len(ids))
	for _, id := range ids {
		expected[id] = true
	}

	// The writers acknowledged exactly the events they were given.
	notAcked := problems{what: "events never acknowledged by a writer"}
	for _, id := range ids {
		if !acked[id] {
			notAcked.add("%s", id)
		}
	}
	strange := problems{what: "acknowledged ids that were not to be sent"}
	for id := range acked {
		if !expected[id] {
			strange.add("%s", id)
		}
	}
	notAcked.report(t)
	strange.report(t)

	// No duplicate row.
	var total, distinct int
	err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT (event_id, handler_key)) FROM inbox_records`).
		Scan(&total, &distinct)
	if err != nil {
		t.Fatal(err)
	}
	if total != distinct {
		t.Errorf("inbox_records has %d rows but %d distinct (event, handler) pairs", total, distinct)
	}
	res.rows = total

	// Every row of every event, done or, exactly where the handler always
	// fails, dead after the last attempt.
	rows, err := pool.Query(ctx, `SELECT event_id, handler_key, event_type, status, attempts, last_error,
       coalesce(ordering_key, ''), seq, updated_at FROM inbox_records`)
	if err != nil {
		t.Fatal(err)
	}
	states := make(map[rowKey]rowState, total)
	var k rowKey
	var s rowState
	var status string
	_, err = pgx.ForEachRow(rows, []any{&k.id, &k.key, &s.eventType, &status, &s.attempts, &s.lastError,
		&s.orderingKey, &s.seq, &s.updatedAt}, func() error {
		s.status = inbox.Status(status)
		states[k] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	missing := problems{what: "missing (event, handler) rows"}
	wrongType := problems{what: "rows with the wrong event type"}
	notDone := problems{what: "healthy rows not done"}
	notDead := problems{what: "rows of an always-failing handler not dead"}
	deadEarly := problems{what: fmt.Sprintf("dead rows with other than %d attempts", maxAttempts)}
	for _, id := range ids {
		for _, key := range handlerKeys(eventType(id)) {
			st, ok := states[rowKey{id, key}]
			if !ok {
				missing.add("event %s handler %s (acknowledged: %v)", id, key, acked[id])
				continue
			}
			if st.eventType != eventType(id) {
				wrongType.add("event %s handler %s: %q, want %q", id, key, st.eventType, eventType(id))
			}
			res.attempts += st.attempts
			res.maxAttempts = max(res.maxAttempts, st.attempts)
			if strings.Contains(st.lastError, leaseExpiredIn) {
				res.rescued++
			}
			if key == keyPlain && alwaysFails(id) {
				if st.status != inbox.Dead {
					notDead.add("event %s handler %s: %s after %d attempts, last error %q", id, key, st.status, st.attempts, st.lastError)
				} else if st.attempts != maxAttempts {
					deadEarly.add("event %s handler %s: %d attempts, last error %q", id, key, st.attempts, st.lastError)
				}
				if st.status == inbox.Dead {
					res.dead++
				}
				continue
			}
			if st.status != inbox.Done {
				notDone.add("event %s handler %s: %s after %d attempts, last error %q", id, key, st.status, st.attempts, st.lastError)
				continue
			}
			res.maxDoneAttempts = max(res.maxDoneAttempts, st.attempts)
			if st.attempts > 1 {
				res.retriedDone++
			}
		}
	}
	extra := problems{what: "rows of events never sent"}
	for k := range states {
		if !expected[k.id] || !slices.Contains(handlerKeys(eventType(k.id)), k.key) {
			extra.add("event %s handler %s", k.id, k.key)
		}
	}
	for _, p := range []*problems{&missing, &wrongType, &notDone, &notDead, &deadEarly, &extra} {
		p.report(t)
	}

	// The transactional handler's effect exactly once per event; the plain
	// handler at least once per done row. (Ledger events: verifyLedger.)
	effects := countBy(t, ctx, pool, "effects")
	plainRuns := countBy(t, ctx, pool, "plain_runs")
	effectWrong := problems{what: "tx handler rows whose effect is not stored exactly once"}
	plainMissing := problems{what: "done plain handler rows that never ran"}
	plainDead := problems{what: "plain runs recorded for an always-failing handler"}
	plainTwice := problems{what: "plain handler rows that ran more often than they were claimed (two runs in one attempt)"}
	for _, id := range ids {
		if eventType(id) == typeLedger {
			continue
		}
		res.txRows++
		if n := effects[rowKey{id, keyTx}]; n != 1 {
			effectWrong.add("event %s: %d effects; %s", id, n, describeEffects(ctx, pool, id))
		}
		if alwaysFails(id) {
			if n := plainRuns[rowKey{id, keyPlain}]; n != 0 {
				plainDead.add("event %s: %d runs", id, n)
			}
			continue
		}
		st := states[rowKey{id, keyPlain}]
		if st.status == inbox.Done {
			res.plainDone++
			// Each run belongs to an attempt, and each attempt to a claim.
			switch n := plainRuns[rowKey{id, keyPlain}]; {
			case n < 1:
				plainMissing.add("event %s", id)
			case n > st.attempts:
				plainTwice.add("event %s: %d runs in %d attempts, last error %q", id, n, st.attempts, st.lastError)
			}
			res.plainReruns += max(0, plainRuns[rowKey{id, keyPlain}]-1)
		}
	}
	strayEffects := problems{what: "effects or plain runs of events never sent"}
	for k, n := range effects {
		res.effects += n
		if !expected[k.id] || k.key != keyTx || eventType(k.id) == typeLedger {
			strayEffects.add("effects: event %s handler %s (%d)", k.id, k.key, n)
		}
	}
	for k, n := range plainRuns {
		res.plainRuns += n
		if !expected[k.id] || k.key != keyPlain || eventType(k.id) == typeLedger {
			strayEffects.add("plain_runs: event %s handler %s (%d)", k.id, k.key, n)
		}
	}
	for _, p := range []*problems{&effectWrong, &plainMissing, &plainDead, &plainTwice, &strayEffects} {
		p.report(t)
	}

	res.ledger = verifyLedger(t, ctx, pool, plan, states)
	return res
}

// countBy counts a side-effect table's rows per (event, handler).
func countBy(t *testing.T, ctx context.Context, pool *pgxpool.Pool, table string) map[rowKey]int {
	t.Helper()
	rows, err := pool.Query(ctx, `SELECT event_id, handler_key, count(*) FROM `+pgx.Identifier{table}.Sanitize()+` GROUP BY 1, 2`)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[rowKey]int)
	var k rowKey
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&k.id, &k.key, &n}, func() error {
		out[k] = n
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// describeEffects lists an event's effects and rows, to diagnose a double
// application.
func describeEffects(ctx context.Context, pool *pgxpool.Pool, id uuid.UUID) string {
	var b strings.Builder
	rows, err := pool.Query(ctx, `SELECT pid, at FROM effects WHERE event_id = $1 ORDER BY at`, id)
	if err == nil {
		for rows.Next() {
			var pid int
			var at any
			if rows.Scan(&pid, &at) == nil {
				fmt.Fprintf(&b, "effect by pid %d at %v; ", pid, at)
			}
		}
		rows.Close()
	}
	var status string
	var attempts int
	var lastError string
	if pool.QueryRow(ctx, `SELECT status, attempts, last_error FROM inbox_records WHERE event_id = $1 AND handler_key = $2`,
		id, keyTx).Scan(&status, &attempts, &lastError) == nil {
		fmt.Fprintf(&b, "row %q after %d attempts, last error %q", status, attempts, lastError)
	}
	return b.String()
}
