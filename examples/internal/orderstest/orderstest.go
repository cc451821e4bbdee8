// Package orderstest is the test the broker adapters' example services
// share: it runs one against a PostgreSQL database of its own and checks
// what it stored.
package orderstest

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox/internal/pgserver"
	"github.com/pginbox/inbox/internal/testenv"
)

// Name returns a name for one run of the example called example, for its
// schema and its broker's streams, queues or topics: example_NAME_test_N.
func Name(example string) string {
	return fmt.Sprintf("example_%s_test_%d", example, time.Now().UnixNano())
}

// Run runs an example (its run function, with the flags -database,
// -schema name, -every 50ms and brokerArgs) against a database of its own
// until events it published were stored and handled by both its handlers
// and it published a duplicate; then it stops it as Ctrl-C would, and
// expects a clean stop and every event stored once.
func Run(t *testing.T, name string, run func(ctx context.Context, args []string, stdout io.Writer) error, brokerArgs ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := pgserver.Find(ctx)
	if err != nil {
		t.Fatalf("the example's test needs PostgreSQL: %v", err)
	}
	defer srv.Close()
	url, drop, err := srv.CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer drop(context.Background())
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = name // created by the example
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var out testenv.LogLines
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, append([]string{"-database", url, "-schema", name, "-every", "50ms"}, brokerArgs...), &out)
	}()

	const want = 5
	var orders, emails int
	err = testenv.Poll(time.Minute, func() (bool, error) {
		select {
		case err := <-done:
			return false, fmt.Errorf("run returned early: %v", err)
		default:
		}
		_ = pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM orders),
			(SELECT count(*) FROM inbox_records WHERE handler_key = 'send_email' AND status = 'done')`).Scan(&orders, &emails)
		return orders >= want && emails >= want && strings.Contains(out.String(), "duplicate"), nil
	})
	if err != nil {
		t.Fatalf("%v: %d orders saved, %d e-mails sent, want %d of each and a duplicate; output:\n%s",
			err, orders, emails, want, out.String())
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of being stopped")
	}
	// Both handlers have a row of every event stored, and no attempt
	// failed: an order the duplicates published had applied twice would
	// have failed on the orders table's key.
	var rows, events, failed int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT event_id), count(*) FILTER (WHERE status IN ('failed', 'dead') OR attempts > 1)
		FROM inbox_records`).Scan(&rows, &events, &failed); err != nil {
		t.Fatal(err)
	}
	if rows != 2*events || failed != 0 {
		t.Errorf("%d rows for %d events, %d with a failed attempt; want two per event, none failed", rows, events, failed)
	}
	if s := out.String(); !strings.Contains(s, "inbox stopped") {
		t.Errorf("output lacks the graceful stop:\n%s", s)
	}
}
