// Package inboxtest tests handlers of [github.com/pginbox/inbox] against
// real PostgreSQL, without workers left running in the background and
// without sleeps: each test gets a migrated schema of its own
// ([NewPool]), stores records, runs what is due with [Runner.Drain], which
// returns once the results are stored and its worker has stopped, and
// asserts on the stored rows ([RequireStatus], [RequireCounts], [Event]).
//
// A whole handler test:
//
//	func TestReserveStock(t *testing.T) {
//		t.Parallel()
//		pool := inboxtest.NewPool(t) // a schema of this test's own, migrated
//		_, err := pool.Exec(t.Context(), `CREATE TABLE reservations (order_id uuid PRIMARY KEY, qty int NOT NULL)`)
//		if err != nil {
//			t.Fatal(err)
//		}
//		reg := inbox.NewRegistry()
//		reg.On("order_created", orders.ReserveStock()) // the TxHandler under test
//		r, err := inboxtest.NewRunner(pool, reg, inbox.WithMaxRetryAttempt(3))
//		if err != nil {
//			t.Fatal(err)
//		}
//
//		orderID := uuid.New()
//		rec, err := inbox.NewRecord(uuid.New(), "order_created",
//			fmt.Appendf(nil, `{"id": %q, "sku": "A1", "qty": 2}`, orderID))
//		if err != nil {
//			t.Fatal(err)
//		}
//		if err := r.Client().Set(t.Context(), rec); err != nil {
//			t.Fatal(err)
//		}
//		if _, err := r.Drain(t.Context()); err != nil {
//			t.Fatal(err)
//		}
//
//		inboxtest.RequireStatus(t, pool, rec.ID(), "reserve_stock", inbox.Done)
//		var qty int
//		err = pool.QueryRow(t.Context(), `SELECT qty FROM reservations WHERE order_id = $1`, orderID).Scan(&qty)
//		if err != nil || qty != 2 {
//			t.Fatalf("reservation: qty %d, %v; want 2", qty, err)
//		}
//	}
//
// # PostgreSQL
//
// The first [NewPool] (or [NewSchema]) of a test binary finds a server, as
// the inbox's own tests do, trying in order:
//
//  1. the server at INBOX_TEST_DATABASE_URL, a postgres:// URL of a role
//     allowed to create databases, when that variable is set;
//  2. a postgres:16-alpine container started with testcontainers-go, when
//     a Docker engine answers;
//  3. a throwaway cluster run with the PostgreSQL server binaries of this
//     machine (initdb and pg_ctl on PATH or under /usr/lib/postgresql).
//
// When none works, the test fails (it is never skipped) with each way's
// error and how to provide a server. Each test binary (each package that
// `go test` runs) finds its own server: set INBOX_TEST_DATABASE_URL to
// share one.
//
// On that server the binary creates one database, named
// inboxtest_<time>_<random>, and each NewPool creates a schema in it,
// named after the test, which the test's cleanup drops. Go has no hook at
// the end of a test binary, so the database itself is left when the
// binary exits:
//
//   - a container or throwaway cluster is removed with it when the process
//     exits (the container by testcontainers' reaper, unless
//     TESTCONTAINERS_RYUK_DISABLED turns it off; the cluster by a guard
//     process), database and all;
//   - on the server of INBOX_TEST_DATABASE_URL the database stays until a
//     later test binary using inboxtest on that server starts: it drops
//     every inboxtest_ database that is more than a minute old and that no
//     session is connected to. A binary keeps a connection to its database
//     open while it runs, so running binaries keep theirs.
//
// # Draining
//
// A [Runner] holds what [inbox.New] takes: a pool, a registry and options
// (by default it polls every [IterationRate] and logs warnings and errors
// only). [Runner.Client] stores records; [Runner.Drain] starts an Inbox,
// waits until no row it could run is due, nor due again within the retry
// window, and none is in progress, stops the Inbox, checks again, and
// returns once a check after a stop finds nothing to wait for.
//
// Failed rows whose retries come due within the window
// ([DefaultRetryWindow], 250 ms, or [RetryWindow]) are retried in the same
// Drain. So under inbox.WithRetryBackoff(time.Millisecond,
// 5*time.Millisecond) a failing row is dead after one Drain, and under the
// inbox's default backoff (a first retry after 0.5 to 1 s) it is failed
// after its first attempt; a later Drain with a longer RetryWindow runs
// its retries.
//
// # Assertions
//
// [RequireStatus], [RequireCounts] and [Event] read the table through
// [inbox.Admin], call t.Helper and fail with what they found: the row with
// its attempts, last error and history, or the counts with the rows not
// done.
package inboxtest
