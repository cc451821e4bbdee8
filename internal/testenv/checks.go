package testenv

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// KillSize is the size of the broker adapters' kill tests ([KillRounds]):
// 3,000 messages and 6 kills, or 10,000 and 12 when the environment
// variable INBOX_KILL_FULL is 1.
func KillSize() (messages, kills int) {
	if os.Getenv("INBOX_KILL_FULL") == "1" {
		return 10_000, 12
	}
	return 3_000, 6
}

// StoredOnce fails t unless the table inbox_records of pool holds
// perEvent rows (one per handler of the event type) for each of ids and
// no other row: every message published with those ids stored exactly
// once, and nothing else.
func StoredOnce(t testing.TB, pool *pgxpool.Pool, ids []uuid.UUID, perEvent int) {
	t.Helper()
	var rows, events, published int
	err := pool.QueryRow(context.Background(),
		`SELECT count(*), count(DISTINCT event_id), count(*) FILTER (WHERE event_id = ANY($1)) FROM inbox_records`,
		ids).Scan(&rows, &events, &published)
	if err != nil {
		t.Fatalf("count the stored events: %v", err)
	}
	want := len(ids) * perEvent
	if rows != want || events != len(ids) || published != want {
		t.Fatalf("inbox_records holds %d rows of %d distinct events, %d rows of them for the %d events published; "+
			"want %d rows (%d per event) of %d events, all of them published: an event stored twice, lost, or foreign",
			rows, events, published, len(ids), want, perEvent, len(ids))
	}
}

// holdEvery is how often [Hold] calls its check.
const holdEvery = 10 * time.Millisecond

// Hold calls check every 10ms for d, from now on, and fails t with
// "while what: ..." on the first error it returns. It is for what must
// stay true for a while (nothing acknowledged while PostgreSQL is down,
// say), not for waiting: see [Eventually] for that.
func Hold(t testing.TB, d time.Duration, what string, check func() error) {
	t.Helper()
	tick := time.NewTicker(holdEvery)
	defer tick.Stop()
	for end := time.Now().Add(d); ; <-tick.C {
		if err := check(); err != nil {
			t.Fatalf("while %s: %v", what, err)
		}
		if !time.Now().Before(end) {
			return
		}
	}
}
