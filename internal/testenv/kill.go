package testenv

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// KillRounds is the broker adapters' crash scenario: a consumer in a child
// process is SIGKILLed again and again, in turns while its Set waits in
// PostgreSQL (before the commit) and while it holds a committed batch
// (before the ack). After each kill it checks that every message the
// broker counts as acknowledged is stored, that a batch killed before its
// commit left no row, and that a committed batch was not acknowledged.
// The caller then starts a consumer that must finish the stream.
type KillRounds struct {
	// Pool is a pool on the schema the children store into.
	Pool *pgxpool.Pool
	// Total is the number of distinct messages waiting on the broker.
	Total int
	// Rounds is the number of children killed; even rounds kill before the
	// commit, odd rounds after it.
	Rounds int
	// Start starts a child consumer whose inbox has the option
	// [HangAfterSet](hangAt).
	Start func(t testing.TB, round, hangAt int) *Child
	// Unacked returns how many of the Total messages the broker has not
	// had acknowledged (not yet delivered, or delivered and unacked),
	// once it has seen the killed consumer go, if it tracks that.
	Unacked func() (int, error)
}

// Lines a child with [HangAfterSet] prints.
const (
	hangLine = "hang"
	setLine  = "set %d"
)

// HangAfterSet is the option of a crash-test child's inbox: it prints
// "set N" after its Nth Set that committed, and after the nth (n > 0) it
// prints "hang" and blocks that Set's caller forever, between the commit
// and the acknowledgement.
func HangAfterSet(n int) inbox.Option {
	var sets atomic.Int64
	return inbox.WithHooks(inbox.Hooks{OnSet: func(_ context.Context, e inbox.SetEvent) {
		if e.Err != nil || e.Tx {
			return
		}
		i := sets.Add(1)
		fmt.Printf(setLine+"\n", i)
		if i == int64(n) {
			fmt.Println(hangLine)
			select {} // until SIGKILL
		}
	}})
}

// Run kills k.Rounds children and checks the broker and the inbox after
// each kill.
//
// A killed client's backend goes on with the statement it was running
// until it notices the client is gone, and a Set of one statement commits
// by itself at its end. So that a kill before the commit is one, Run has
// the database check its clients' connections every 50 ms while a
// statement runs (client_connection_check_interval, for the connections
// the children open after it) and keeps the lock until the killed child's
// backend has ended.
func (k KillRounds) Run(t *testing.T) {
	t.Helper()
	if _, err := k.Pool.Exec(context.Background(), `DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET client_connection_check_interval = %L', current_database(), '50ms');
END $$`); err != nil {
		t.Fatalf("have the database check its clients' connections: %v", err)
	}
	for r := range k.Rounds {
		if r%2 == 0 {
			k.killBeforeCommit(t, r)
		} else {
			k.killAfterCommit(t, r)
		}
	}
}

// killBeforeCommit lets a child commit a batch, then holds a lock that
// makes its next Set wait inside its transaction, kills it there, and
// checks that the transaction left nothing once its backend has gone.
func (k KillRounds) killBeforeCommit(t *testing.T, r int) {
	t.Helper()
	c := k.Start(t, r, 0)
	c.WaitLine(t, time.Minute, fmt.Sprintf(setLine, 1))
	release := holdInserts(t, k.Pool)
	pid := blockedInsert(t, k.Pool)
	held := k.stored(t)
	c.Kill(t)
	Eventually(t, time.Minute, "the killed child's backend to end", func() (bool, error) {
		var n int
		err := k.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&n)
		return n == 0, err
	})
	release()
	stored, acked := k.check(t, r, "before its commit")
	if stored != held {
		t.Fatalf("round %d: %d events stored after a child was killed inside its Set, %d before: "+
			"its transaction committed", r, stored, held)
	}
	t.Logf("round %d: killed inside a Set (backend %d); %d stored, %d acked", r, pid, stored, acked)
}

// killAfterCommit kills a child that hangs after one of its commits.
func (k KillRounds) killAfterCommit(t *testing.T, r int) {
	t.Helper()
	hangAt := 1 + (r/2)%3 // deeper into the stream from round to round
	c := k.Start(t, r, hangAt)
	c.WaitLine(t, time.Minute, hangLine)
	c.Kill(t)
	stored, acked := k.check(t, r, "after its commit")
	if acked >= stored {
		t.Fatalf("round %d: %d messages acked with %d events stored, after a child was killed holding "+
			"a committed batch: that batch was acked", r, acked, stored)
	}
	t.Logf("round %d: killed after Set %d committed; %d stored, %d acked", r, hangAt, stored, acked)
}

// check fails t if the broker counts more messages acknowledged than
// there are events stored, and returns both counts.
func (k KillRounds) check(t *testing.T, r int, when string) (stored, acked int) {
	t.Helper()
	unacked, err := k.Unacked()
	if err != nil {
		t.Fatalf("round %d: count the broker's unacked messages: %v", r, err)
	}
	stored, acked = k.stored(t), k.Total-unacked
	if acked > stored {
		t.Fatalf("round %d: the broker counts %d messages acked but only %d events are stored, "+
			"after a child was killed %s", r, acked, stored, when)
	}
	return stored, acked
}

// stored returns the number of distinct events stored.
func (k KillRounds) stored(t *testing.T) int {
	t.Helper()
	var n int
	if err := k.Pool.QueryRow(context.Background(), `SELECT count(DISTINCT event_id) FROM inbox_records`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// holdInserts takes a lock on inbox_records that lets reads through but
// makes every insert wait, until the returned function is called.
func holdInserts(t *testing.T, pool *pgxpool.Pool) (release func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE inbox_records IN SHARE MODE`); err != nil {
		_ = tx.Rollback(ctx)
		t.Fatal(err)
	}
	return func() {
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// blockedInsert waits until a backend waits for a lock on inbox_records
// and returns its process id.
func blockedInsert(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var pid int
	Eventually(t, time.Minute, "a Set waiting on the lock", func() (bool, error) {
		err := pool.QueryRow(context.Background(), `
SELECT coalesce(min(pid), 0) FROM pg_locks WHERE NOT granted AND relation = 'inbox_records'::regclass`).Scan(&pid)
		return pid != 0, err
	})
	return pid
}
