package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/pgbouncer"
	"github.com/pginbox/inbox/internal/testenv"
)

// The inbox behind a real PgBouncer 1.18 in transaction mode, in every pgx
// exec mode: migrate (from several processes at once), Set and SetTx from
// concurrent clients, two Inboxes processing with retries and a
// TxHandler, and a graceful Stop. Half the modes listen on a direct
// connection (WithListenConfig); the others find that LISTEN does not work
// through the pooler, say so, and poll.
//
// Before the engine's v2, the statement cache broke Migrate ("prepared
// statement already exists") and made Sets and result writes fail
// intermittently; the exec and simple-protocol modes failed every Set and
// claim (uuids sent as [16]byte have no text encoding).
func TestBehindPgBouncer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bouncer, err := pgbouncer.Start(ctx, testenv.URL())
	if err != nil {
		t.Fatalf("PgBouncer: %v", err)
	}
	t.Cleanup(func() {
		if err := bouncer.Close(); err != nil {
			t.Errorf("close PgBouncer: %v", err)
		}
	})
	modes := []pgx.QueryExecMode{
		pgx.QueryExecModeCacheStatement,
		pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec,
		pgx.QueryExecModeExec,
		pgx.QueryExecModeSimpleProtocol,
	}
	for i, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			pooledScenario(t, bouncer, mode, i%2 == 0)
		})
	}
}

func pooledScenario(t *testing.T, bouncer *pgbouncer.Bouncer, mode pgx.QueryExecMode, direct bool) {
	ctx := context.Background()
	dbName := newDatabase(t)
	cfg, err := pgxpool.ParseConfig(bouncer.URL(dbName))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.DefaultQueryExecMode = mode
	cfg.MaxConns = 12 // three times the pooler's server connections
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	// Several processes migrate at once.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = inbox.Migrate(ctx, pool) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Migrate through PgBouncer: %v", err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE ledger (event uuid PRIMARY KEY)`, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}

	var plainRuns sync.Map
	var failedOnce sync.Map
	var snoozed sync.Map
	reg := inbox.NewRegistry()
	reg.On("order",
		inbox.HandlerFunc("plain", func(ctx context.Context, _ []byte) error {
			a, _ := inbox.AttemptFromContext(ctx)
			n, _ := plainRuns.LoadOrStore(a.EventID, new(atomic.Int32))
			n.(*atomic.Int32).Add(1)
			return nil
		}),
		inbox.HandlerFunc("flaky", func(ctx context.Context, _ []byte) error {
			a, _ := inbox.AttemptFromContext(ctx)
			if _, loaded := failedOnce.LoadOrStore(a.EventID, true); !loaded {
				return errors.New("first attempt fails")
			}
			return nil
		}),
		inbox.HandlerFunc("snoozing", func(ctx context.Context, _ []byte) error {
			a, _ := inbox.AttemptFromContext(ctx)
			if _, loaded := snoozed.LoadOrStore(a.EventID, true); !loaded {
				return inbox.RetryAfter(10*time.Millisecond, errors.New("rate limited"))
			}
			return nil
		}),
		inbox.TxHandlerFunc("ledger", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
			a, _ := inbox.AttemptFromContext(ctx)
			// The test's own statements name a mode that works behind the
			// pooler; the library's must work whatever the pool's mode.
			_, err := tx.Exec(ctx, `INSERT INTO ledger VALUES ($1)`, pgx.QueryExecModeExec, a.EventID)
			return err
		}),
	)
	var probeErrs atomic.Int32
	// Leases of the default length: four server connections shared by two
	// workers, their TxHandlers and four clients, under the race detector
	// on a loaded machine, can hold a renewal up longer than a one-second
	// lease allows, and a handler given up runs again.
	opts := testenv.Fast(t, inbox.WithTransactionPooler(), inbox.WithMaxRetryAttempt(10), inbox.WithLease(inbox.DefaultLease),
		inbox.OnErrorCallback(func(err error) {
			if errors.Is(err, inbox.ErrNotifyUnavailable) {
				probeErrs.Add(1)
			}
		}))
	if direct {
		lc, err := pgx.ParseConfig(testenv.URL())
		if err != nil {
			t.Fatal(err)
		}
		lc.Database = dbName
		opts = append(opts, inbox.WithListenConfig(lc), inbox.WithIterationRate(time.Hour))
	} else {
		opts = append(opts, inbox.WithIterationRate(50*time.Millisecond))
	}
	a := start(t, pool, reg, opts...)
	b := start(t, pool, reg, opts...)

	// Four clients store 400 events over 16 ordering keys, a tenth of them
	// twice, some in their own transactions.
	const clients, perClient = 4, 100
	ids := make([][]uuid.UUID, clients)
	var stored atomic.Int32
	errs = make([]error, clients)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perClient; i += 10 {
				var recs []*inbox.Record
				for j := range 10 {
					id := uuid.New()
					ids[c] = append(ids[c], id)
					// Ordered: chains, the rows a failure hands back to
					// wait (due at 'infinity') and the keys' locks go
					// through the pooler too.
					key := fmt.Sprintf("c%d/%d", c, j%4)
					recs = append(recs, testenv.Record(t, id, "order", "").WithOrderingKey(key))
				}
				recs = append(recs, recs[0]) // a duplicate
				var res inbox.SetResult
				var err error
				if i%20 == 0 {
					err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
						res, err = a.Client().SetTxWithResult(ctx, tx, recs...)
						return err
					})
				} else {
					res, err = b.Client().SetWithResult(ctx, recs...)
				}
				if err != nil {
					errs[c] = err
					return
				}
				if res.New != 10 || res.Duplicates != 1 || res.Rows != 40 {
					errs[c] = fmt.Errorf("SetResult = %+v, want 10 new, 1 duplicate, 40 rows", res)
					return
				}
				stored.Add(10)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Set through PgBouncer: %v", err)
	}
	n := int(stored.Load())
	waitCounts(t, a, 60*time.Second, map[inbox.Status]int{inbox.Done: 4 * n})

	var ledger int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM ledger`, pgx.QueryExecModeSimpleProtocol).Scan(&ledger); err != nil {
		t.Fatal(err)
	}
	if ledger != n {
		t.Fatalf("ledger has %d rows, want exactly one per event (%d)", ledger, n)
	}
	for _, list := range ids {
		for _, id := range list {
			r, ok := plainRuns.Load(id)
			if !ok || r.(*atomic.Int32).Load() != 1 {
				t.Fatalf("plain handler ran %v times for %s, want once", r, id)
			}
		}
	}
	states, err := a.Lookup(ctx, ids[0][0])
	if err != nil || len(states) != 4 {
		t.Fatalf("Lookup = %v, %v", states, err)
	}
	for _, s := range states {
		want := map[string]int{"flaky": 2, "snoozing": 1}[s.HandlerKey]
		if s.Status != inbox.Done || s.Attempts != max(want, 1) {
			t.Errorf("%s: %s after %d attempts, want done after %d", s.HandlerKey, s.Status, s.Attempts, max(want, 1))
		}
	}
	// The operators' API works through the pooler too: counters, groups,
	// pause and a replay of done rows that runs them again.
	admin := a.Admin()
	stats, err := admin.Stats(ctx)
	if err != nil || len(stats) != 4 {
		t.Fatalf("Stats through PgBouncer: %+v, %v", stats, err)
	}
	for _, h := range stats {
		if h.Done != int64(n) {
			t.Fatalf("Stats through PgBouncer: %s has %d done rows, want %d", h.HandlerKey, h.Done, n)
		}
	}
	if _, err := admin.DeadGroups(ctx, inbox.Filter{}, 0); err != nil {
		t.Fatalf("DeadGroups through PgBouncer: %v", err)
	}
	if err := admin.Pause(ctx, "", "nobody", "test", "pooler"); err != nil {
		t.Fatalf("Pause through PgBouncer: %v", err)
	}
	if err := admin.ReplayRow(ctx, ids[0][0], "flaky", inbox.ActionOptions{Actor: "test"}); err != nil {
		t.Fatalf("ReplayRow through PgBouncer: %v", err)
	}
	testenv.Eventually(t, 30*time.Second, "the replayed row to run again", func() (bool, error) {
		states, err := a.Lookup(ctx, ids[0][0])
		for _, s := range states {
			if s.HandlerKey == "flaky" {
				return s.Status == inbox.Done && s.Attempts >= 1, err
			}
		}
		return false, err
	})
	if !direct {
		testenv.Eventually(t, 10*time.Second, "both Inboxes to find that LISTEN does not work through PgBouncer",
			func() (bool, error) { return probeErrs.Load() == 2, nil })
	}
	for _, ib := range []*inbox.Inbox{a, b} {
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err := ib.Stop(sctx)
		cancel()
		if err != nil {
			t.Fatalf("Stop through PgBouncer: %v", err)
		}
	}
	if direct && probeErrs.Load() != 0 {
		t.Fatalf("the direct listening connection failed its probe %d times", probeErrs.Load())
	}
	if !direct && probeErrs.Load() != 2 {
		t.Fatalf("%d Inboxes reported that LISTEN does not work through PgBouncer, want both", probeErrs.Load())
	}
	var workers int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_workers`, pgx.QueryExecModeSimpleProtocol).Scan(&workers); err != nil || workers != 0 {
		t.Fatalf("%d heartbeats after Stop, %v; want none", workers, err)
	}
}

var databaseSeq atomic.Int64

// newDatabase creates a database on the test server for one test and
// drops it when the test ends.
func newDatabase(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("inbox_t%d_%s", databaseSeq.Add(1), strings.ReplaceAll(uuid.NewString()[:8], "-", ""))
	conn, err := pgx.Connect(ctx, testenv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, testenv.URL())
		if err != nil {
			t.Errorf("drop database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return name
}
