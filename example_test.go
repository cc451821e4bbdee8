package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// exampleSeq numbers the schemas of examplePool.
var exampleSeq atomic.Int64

// examplePool returns a pool working in a fresh schema of the test database.
func examplePool() *pgxpool.Pool {
	ctx := context.Background()
	schema := fmt.Sprintf("example_%d", exampleSeq.Add(1))
	cfg, err := pgxpool.ParseConfig(testenv.URL())
	if err != nil {
		panic(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		panic(err)
	}
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		panic(err)
	}
	return pool
}

// waitIdle waits until no row of ib is due or running.
func waitIdle(ib *inbox.Inbox) {
	err := testenv.Poll(10*time.Second, func() (bool, error) {
		c, err := ib.Counts(context.Background())
		return c[inbox.Null]+c[inbox.Failed]+c[inbox.Progress] == 0, err
	})
	if err != nil {
		panic(err)
	}
}

// Store events from a broker consumer and process them with two handlers.
// The redelivered event is stored and processed once.
func Example() {
	ctx := context.Background()
	pool := examplePool()
	defer pool.Close()

	var mu sync.Mutex
	var lines []string
	logLine := func(key string) inbox.Handler {
		return inbox.HandlerFunc(key, func(_ context.Context, payload []byte) error {
			mu.Lock()
			defer mu.Unlock()
			lines = append(lines, key+": "+string(payload))
			return nil
		})
	}
	registry := inbox.NewRegistry()
	registry.On("order_created", logLine("reserve_stock"), logLine("send_email"))

	ib, err := inbox.New(pool, registry,
		inbox.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := ib.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer ib.Stop(ctx)

	id := uuid.MustParse("7d444840-9dc0-11d1-b245-5ffdce74fad2")
	for range 2 { // the broker delivers the message twice
		rec, err := inbox.NewRecord(id, "order_created", []byte(`{"order":42}`))
		if err != nil {
			fmt.Println(err)
			return
		}
		if err := ib.Client().Set(ctx, rec); err != nil {
			fmt.Println(err) // do not ack: the broker will redeliver
			return
		}
		// ack the message here
	}
	waitIdle(ib)

	sort.Strings(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	states, err := ib.Lookup(ctx, id)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, s := range states {
		fmt.Println(s.HandlerKey, s.Status, s.Attempts)
	}
	// Output:
	// reserve_stock: {"order":42}
	// send_email: {"order":42}
	// reserve_stock done 1
	// send_email done 1
}

// A TxHandler writes in the transaction that marks its row done, so its
// writes happen exactly once even when an attempt fails after writing.
func ExampleTxHandlerFunc() {
	ctx := context.Background()
	pool := examplePool()
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE balances (account text PRIMARY KEY, cents bigint NOT NULL)`); err != nil {
		fmt.Println(err)
		return
	}

	failures := 1
	registry := inbox.NewRegistry()
	registry.On("deposit", inbox.TxHandlerFunc("credit", func(ctx context.Context, tx pgx.Tx, payload []byte) error {
		_, err := tx.Exec(ctx, `INSERT INTO balances VALUES ('alice', $1)
			ON CONFLICT (account) DO UPDATE SET cents = balances.cents + excluded.cents`, string(payload))
		if err != nil {
			return err
		}
		if failures > 0 { // the first attempt fails after writing: its write rolls back
			failures--
			return fmt.Errorf("downstream unavailable")
		}
		return nil
	}))
	ib, err := inbox.New(pool, registry, inbox.WithRetryBackoff(10*time.Millisecond, 10*time.Millisecond),
		inbox.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := ib.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer ib.Stop(ctx)

	rec, _ := inbox.NewRecord(uuid.New(), "deposit", []byte("1500"))
	if err := ib.Client().Set(ctx, rec); err != nil {
		fmt.Println(err)
		return
	}
	waitIdle(ib)

	var cents int64
	if err := pool.QueryRow(ctx, `SELECT cents FROM balances WHERE account = 'alice'`).Scan(&cents); err != nil {
		fmt.Println(err)
		return
	}
	states, err := ib.Lookup(ctx, rec.ID())
	if err != nil || len(states) != 1 {
		fmt.Println(states, err)
		return
	}
	fmt.Println("balance:", cents)
	fmt.Println(states[0].Status, "after", states[0].Attempts, "attempts; last error:", states[0].LastError)
	// Output:
	// balance: 1500
	// done after 2 attempts; last error: downstream unavailable
}

// Bad input is rejected before anything is written, with an error that
// wraps a sentinel and says what to do.
func ExampleClient_Set_unknownEventType() {
	ctx := context.Background()
	pool := examplePool()
	defer pool.Close()
	if err := inbox.Migrate(ctx, pool); err != nil {
		fmt.Println(err)
		return
	}
	registry := inbox.NewRegistry()
	registry.On("order_created", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	ib, _ := inbox.New(pool, registry)

	known, _ := inbox.NewRecord(uuid.New(), "order_created", nil)
	unknown, _ := inbox.NewRecord(uuid.New(), "order_shipped", nil)
	err := ib.Client().Set(ctx, known, unknown)
	fmt.Println(errors.Is(err, inbox.ErrUnknownEventType))
	fmt.Println(err)
	counts, _ := ib.Counts(ctx)
	fmt.Println("rows stored:", counts[inbox.Null])
	// Output:
	// true
	// inbox: no handler registered for event type: "order_shipped" (1); nothing was stored. Register a handler with Registry.On, or pass WithUnknownEventTypes(SkipUnknown) to skip such records
	// rows stored: 0
}

// Middleware wraps every handler run: here it logs each attempt with the
// event id, the handler key and the outcome. Handlers decide outcomes
// through error values: Discard makes a row dead at once.
func ExampleWithMiddleware() {
	ctx := context.Background()
	pool := examplePool()
	defer pool.Close()

	var mu sync.Mutex
	var log []string
	logging := func(ctx context.Context, a inbox.Attempt, next func(context.Context) error) error {
		err := next(ctx)
		mu.Lock()
		log = append(log, fmt.Sprintf("%s attempt %d of %d: %v", a.HandlerKey, a.Number, a.MaxAttempts, err))
		mu.Unlock()
		return err
	}
	registry := inbox.NewRegistry()
	registry.On("invoice", inbox.HandlerFunc("archive", func(context.Context, []byte) error { return nil }))
	// A handler with settings of its own; they survive any wrapping.
	registry.Handle("invoice", inbox.HandlerFunc("validate", func(_ context.Context, payload []byte) error {
		if len(payload) == 0 {
			return inbox.Discard(errors.New("empty invoice")) // no retry can fix it
		}
		return nil
	}), inbox.HandlerMaxAttempts(3), inbox.HandlerTimeout(time.Second))

	ib, err := inbox.New(pool, registry, inbox.WithMiddleware(logging), inbox.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := ib.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer ib.Stop(ctx)
	rec, _ := inbox.NewRecord(uuid.New(), "invoice", nil)
	if err := ib.Client().Set(ctx, rec); err != nil {
		fmt.Println(err)
		return
	}
	waitIdle(ib)
	mu.Lock()
	sort.Strings(log)
	for _, l := range log {
		fmt.Println(l)
	}
	mu.Unlock()
	// Output:
	// archive attempt 1 of 5: <nil>
	// validate attempt 1 of 3: discarded: empty invoice
}

// SetWithResult says what a Set did with each record, without another
// query: a consumer can count redeliveries, or spot a producer that reuses
// event ids with different contents.
func ExampleClient_SetWithResult() {
	ctx := context.Background()
	pool := examplePool()
	defer pool.Close()
	if err := inbox.Migrate(ctx, pool); err != nil {
		fmt.Println(err)
		return
	}
	registry := inbox.NewRegistry()
	registry.On("order_created", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	ib, _ := inbox.New(pool, registry, inbox.WithLogger(slog.New(slog.DiscardHandler)))

	id := uuid.New()
	first, _ := inbox.NewRecord(id, "order_created", []byte(`{"qty":1}`))
	again, _ := inbox.NewRecord(id, "order_created", []byte(`{"qty":1}`))
	changed, _ := inbox.NewRecord(id, "order_created", []byte(`{"qty":2}`))
	other, _ := inbox.NewRecord(uuid.New(), "order_created", []byte(`{"qty":5}`))

	res, _ := ib.Client().SetWithResult(ctx, first)
	fmt.Printf("new %d, duplicates %d, conflicting %d\n", res.New, res.Duplicates, res.Conflicting)
	res, _ = ib.Client().SetWithResult(ctx, again, changed, other)
	fmt.Printf("new %d, duplicates %d, conflicting %d\n", res.New, res.Duplicates, res.Conflicting)
	// Output:
	// new 1, duplicates 0, conflicting 0
	// new 1, duplicates 1, conflicting 1
}

// Backpressure: with the backlog of an event type at its bound, Set
// refuses the call and writes nothing. The consumer leaves the message
// unacknowledged and tries again later; once the workers have caught up,
// Set stores it.
func ExampleWithMaxBacklog() {
	ctx := context.Background()
	pool := examplePool()
	defer pool.Close()
	if err := inbox.Migrate(ctx, pool); err != nil {
		fmt.Println(err)
		return
	}
	registry := inbox.NewRegistry()
	registry.On("order_created", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	ib, err := inbox.New(pool, registry, inbox.WithMaxBacklog(2, "order_created"),
		inbox.WithIterationRate(20*time.Millisecond), inbox.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		fmt.Println(err)
		return
	}
	// Not started yet: nothing drains the backlog.
	for i := range 3 {
		rec, _ := inbox.NewRecord(uuid.New(), "order_created", []byte(`{}`))
		err := ib.Client().Set(ctx, rec)
		var full *inbox.BacklogFullError
		switch {
		case errors.As(err, &full):
			// Do not ack; the broker redelivers, or retry after a pause.
			fmt.Printf("message %d refused: %s backlog %d, limit %d\n", i, full.EventType, full.Backlog, full.Limit)
			fmt.Println(errors.Is(err, inbox.ErrBacklogFull))
		case err != nil:
			fmt.Println(err)
			return
		default:
			fmt.Printf("message %d stored\n", i) // ack it
		}
	}

	if err := ib.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer ib.Stop(ctx)
	rec, _ := inbox.NewRecord(uuid.New(), "order_created", []byte(`{}`))
	for deadline := time.Now().Add(time.Minute); ; { // the consumer retrying the message it did not ack
		err := ib.Client().Set(ctx, rec)
		if err == nil {
			break
		}
		if !errors.Is(err, inbox.ErrBacklogFull) || time.Now().After(deadline) {
			fmt.Println(err)
			return
		}
		time.Sleep(100 * time.Millisecond) // a consumer's retry pause
	}
	fmt.Println("stored once the workers caught up")
	// Output:
	// message 0 stored
	// message 1 stored
	// message 2 refused: order_created backlog 2, limit 2
	// true
	// stored once the workers caught up
}

// Find why rows died, grouped by failure, and replay a group once its
// cause is fixed: the rows run again and end done, and each row's history
// records who replayed it and why.
func ExampleAdmin_Replay() {
	ctx := context.Background()
	pool := examplePool()
	defer pool.Close()

	var fixed sync.Mutex // held while the downstream service is down
	fixed.Lock()
	down := true
	reg := inbox.NewRegistry()
	reg.On("invoice.issued", inbox.HandlerFunc("mail", func(_ context.Context, p []byte) error {
		fixed.Lock()
		defer fixed.Unlock()
		if down {
			return fmt.Errorf("smtp: 421 try again later (%s)", p)
		}
		return nil
	}))
	fixed.Unlock()
	ib, err := inbox.New(pool, reg, inbox.WithMaxRetryAttempt(1), inbox.WithIterationRate(20*time.Millisecond),
		inbox.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	if err := ib.Start(ctx); err != nil {
		panic(err)
	}
	defer ib.Stop(ctx)
	for i := range 3 {
		rec, _ := inbox.NewRecord(uuid.New(), "invoice.issued", fmt.Appendf(nil, "invoice %d", 100+i))
		if err := ib.Client().Set(ctx, rec); err != nil {
			panic(err)
		}
	}
	waitIdle(ib)

	admin := ib.Admin() // or inbox.NewAdmin(pool) in any process
	groups, err := admin.DeadGroups(ctx, inbox.Filter{}, 0)
	if err != nil {
		panic(err)
	}
	for _, g := range groups {
		fmt.Printf("%s/%s: %d dead: %s\n", g.EventType, g.HandlerKey, g.Count, g.Pattern)
	}

	fixed.Lock()
	down = false // the mail server is back
	fixed.Unlock()
	res, err := admin.Replay(ctx, inbox.Filter{Fingerprint: groups[0].Fingerprint},
		inbox.ActionOptions{Actor: "alice", Reason: "smtp relay restored"})
	if err != nil {
		panic(err)
	}
	fmt.Println("replayed:", res.Changed)
	waitIdle(ib)

	stats, err := admin.Stats(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Printf("done %d, dead %d\n", stats[0].Done, stats[0].Dead)
	// Output:
	// invoice.issued/mail: 3 dead: smtp: <n> try again later (invoice <n>)
	// replayed: 3
	// done 3, dead 0
}

// Events with the same ordering key run one at a time, in the order they
// were stored; a failure holds the key's later events back until it
// succeeds. Different keys run in parallel.
func ExampleRecord_WithOrderingKey() {
	ctx := context.Background()
	pool := examplePool()
	defer pool.Close()
	if err := inbox.Migrate(ctx, pool); err != nil {
		fmt.Println(err)
		return
	}
	var mu sync.Mutex
	var applied []string
	failedOnce := false
	all := make(chan struct{})
	registry := inbox.NewRegistry()
	registry.On("account_changed", inbox.HandlerFunc("balance", func(_ context.Context, p []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if string(p) == "deposit 10" && !failedOnce {
			failedOnce = true
			return errors.New("ledger busy") // retried; "withdraw 5" waits for it
		}
		applied = append(applied, string(p))
		if len(applied) == 3 {
			close(all)
		}
		return nil
	}))
	ib, err := inbox.New(pool, registry, inbox.WithLogger(slog.New(slog.DiscardHandler)),
		inbox.WithRetryBackoff(10*time.Millisecond, 10*time.Millisecond), inbox.WithIterationRate(20*time.Millisecond))
	if err != nil {
		fmt.Println(err)
		return
	}
	var recs []*inbox.Record
	for _, p := range []string{"open", "deposit 10", "withdraw 5"} {
		r, _ := inbox.NewRecord(uuid.New(), "account_changed", []byte(p))
		recs = append(recs, r.WithOrderingKey("account-42"))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		fmt.Println(err)
		return
	}
	if err := ib.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer ib.Stop(ctx)
	select {
	case <-all:
	case <-time.After(time.Minute):
		fmt.Println("timed out")
		return
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Println(strings.Join(applied, ", "))
	// Output:
	// open, deposit 10, withdraw 5
}
