// Command inboxbench measures the inbox library against raw-SQL floors
// measured in the same run.
//
// It creates one database (on the server pgserver.Find returns, or on the
// server given with -url), migrates the inbox schema twice, into schema
// bench_lib for the library and bench_floor for hand-written SQL on the
// same table shape, and runs the workloads below, printing for each the
// library's figure, the floor's, their ratio and the target. Targets are
// reported, PASS or MISS, not asserted.
//
//	W1     Set N events in batches of 1,000, then drain them with a no-op
//	       handler. Two floors: on the library's table shape (COPY, then a
//	       loop that claims 500 rows with a MATERIALIZED CTE, FOR UPDATE
//	       SKIP LOCKED and an UPDATE by ctid, calls a no-op per row and
//	       sets the batch done in one UPDATE), and the same on a minimal
//	       queue table (schema bench_min: id, status, due_at, payload and
//	       one partial index, with the library table's storage
//	       parameters), so that the cost of the table's own shape shows.
//	       Reports load and drain rates and drain CPU per event (this
//	       process plus every PostgreSQL process). 20,000 events at -size
//	       small; 20,000, 100,000 and 1,000,000 at -size full, to show how
//	       drain scales.
//	W1b    one Set per event, each its own transaction; floor: one
//	       INSERT ... ON CONFLICT DO NOTHING per transaction, alternating.
//	W2     latency from Set's commit to handler start on an idle worker;
//	       floor: raw LISTEN/NOTIFY.
//	W3     4 Inbox instances in separate processes draining one table,
//	       against 1; proves no (event, handler) ran twice.
//	Idle   PostgreSQL CPU used by an idle worker on a table of finished
//	       rows; floor: the same window without a worker.
//	Burst  a burst of events with 3 handlers each into a table created
//	       just before (no statistics: as right after install or TRUNCATE),
//	       drained with no ANALYZE, against the same burst drained after
//	       ANALYZE; library and floor. For the floor it also times one
//	       claim of 500 with EXPLAIN (ANALYZE, BUFFERS) on both and prints
//	       both plans. Target: the library drains the fresh table at
//	       >= 0.80x its rate after ANALYZE (its claim's plan does not
//	       depend on statistics).
//	Retention
//	       what a done row costs before and after retention erased its
//	       payload, what retention costs, and whether redelivery is still
//	       caught. For payloads of 64 B, 1 KiB and 16 KiB of random bytes
//	       (64 B and 16 KiB at -size small), 200,000 events with one
//	       handler (20,000 and 5,000 at -size small) are Set and drained;
//	       updated_at is moved 10 days back; an Inbox with
//	       WithRetention(20ms, 60) and WithPayloadRetention(7) runs until
//	       inbox_maintenance records one retention run. Prints bytes per
//	       event (pg_total_relation_size: heap, TOAST, indexes) before the
//	       erasure after VACUUM FULL, right after it, after VACUUM and after
//	       VACUUM FULL, the average whole-row size, and the run's time and
//	       PostgreSQL CPU per payload erased. Then 1,000 of the events are
//	       Set again (same ids and payloads: all duplicates, no handler
//	       runs, no row changes) and 10 with another payload (conflicting:
//	       the stored hash still tells them apart); then updated_at moves
//	       70 days back and a second run must delete every row (time and
//	       CPU per row deleted). Floor: W1's minimal table with the same
//	       payloads, erased by one UPDATE and emptied by one DELETE.
//	       Target: <= 250 B per event after erasure, compacted. Each case
//	       runs once unless -reps is given.
//	Ops    the operators' API (inbox.Admin) on a table keeping 10,000,000
//	       done rows (100,000 at -size small), 5 event types x 2 handler
//	       keys, loaded by INSERT ... SELECT from generate_series in
//	       statements of 1,000,000 rows, plus 10,000 pending rows due now,
//	       1,000 failed and 2,000 dead rows in 5 failure patterns. Times
//	       Admin.Stats, which reads the counters the table keeps, against
//	       the floor it replaces: a GROUP BY over the whole table, whose
//	       counts Stats' must equal exactly (else the workload fails); then
//	       DeadGroups, two pages of List of dead rows, Show, Count of one
//	       fingerprint, and Stats right after a burst of 50,000 pending
//	       rows in 100 statements (it folds their 100 deltas). Target:
//	       Stats <= 50 ms.
//	Hooks  W1's Set then drain at 100,000 events (20,000 at -size small),
//	       without hooks and with a no-op function on every hook and a
//	       propagator that stores nothing, taking turns. Target: the drain
//	       with hooks >= 0.95x the drain without.
//	Ordered
//	       ordered processing. 200,000 events (20,000 at -size small)
//	       with ordering keys spread over 1,000 keys (each Set batch of
//	       1,000 holds events of about 620 keys, each key's in order) are
//	       Set and drained with a no-op handler that checks each key's
//	       order, taking turns with the same events without keys, with
//	       those on a table with inbox_records_progress_idx. An
//	       ordered drain not done after 30s (10s at -size small) stops
//	       there and is rated by what ran. Reports Set rates (also of the
//	       first and last tenth of the Sets), drain rates, CPU per event,
//	       and claim and write times (from hooks). Target: the ordered
//	       drain >= 0.50x the drain without keys.
//	       Then the claim's cost with rows kept: a table keeping 1,000,000
//	       done rows (100,000 at -size small), 1,000 parked keys (a dead
//	       row each) and 100,000 rows waiting behind them (10,000), loaded
//	       by INSERT ... SELECT from generate_series, against an empty
//	       table: 20,000 fresh events (10,000) over 1,000 other keys, and
//	       the same without keys, Set and drained on each.
//
// Method: every figure is the median, printed with its min–max range, of
// several repetitions in which the library's and the floors' runs take
// turns (library, floor, library, floor, ...), so that both see the same
// machine; ratios are ratios of medians. -reps sets the repetitions: by
// default 5 at -size full (3 for W1 at 1,000,000 events) and 3 at -size
// small. Before each timed drain the table is loaded and then settled with
// VACUUM ANALYZE and a CHECKPOINT (as a caught-up autovacuum would leave
// it), except in Burst, whose point is the table before any of that. The
// machine's load average is printed: other processes skew the figures.
//
// Usage:
//
//	go run ./cmd/inboxbench [-size small|full] [-reps N] [-only W1,W1b,W2,W3,Idle,Burst,Retention,Ops,Hooks,Ordered] [-url URL]
//
// -size small finishes in about a minute (for CI); -size full is the real
// measurement and takes a quarter of an hour or more. -url names a
// PostgreSQL server (a postgres:// URL of a role allowed to create
// databases); the benchmark creates its own database there and drops it at
// the end.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/pgserver"
)

// size holds the event counts and windows of one -size.
type size struct {
	name       string
	reps       int             // repetitions of each measurement (-reps overrides)
	w1         []int           // W1 drain sizes; the first is the reference
	w1b        int             // W1b: sequential one-event Sets
	w2         int             // W2: events sent 20 ms apart
	w3         int             // W3: events drained by 1 and by 4 processes
	burst      int             // Burst: events, each stored for 3 handlers
	idleRows   int             // Idle: done rows kept in the table
	idleWindow time.Duration   // Idle: measurement window
	retention  []retentionCase // Retention: payload sizes and events
	opsRows    int             // Ops: done rows kept

	ordered        int           // Ordered: events drained with and without ordering keys
	orderedKept    int           // Ordered: done rows kept for the claim's cost
	orderedWaiting int           // Ordered: rows kept waiting behind parked keys
	orderedFresh   int           // Ordered: events drained over the kept rows
	orderedCap     time.Duration // Ordered: the longest an ordered drain with default options runs
}

var sizes = map[string]size{
	"small": {name: "small", reps: 3, w1: []int{20_000}, w1b: 300, w2: 50, w3: 10_000, burst: 5_000,
		idleRows: 100_000, idleWindow: 2 * time.Second,
		retention: []retentionCase{{64, 20_000}, {16 << 10, 5_000}}, opsRows: 100_000,
		ordered: 20_000, orderedKept: 100_000, orderedWaiting: 10_000, orderedFresh: 10_000, orderedCap: 10 * time.Second},
	"full": {name: "full", reps: 5, w1: []int{20_000, 100_000, 1_000_000}, w1b: 2_000, w2: 200, w3: 100_000, burst: 60_000,
		idleRows: 1_000_000, idleWindow: 10 * time.Second,
		retention: []retentionCase{{64, 200_000}, {1 << 10, 200_000}, {16 << 10, 200_000}}, opsRows: 10_000_000,
		ordered: 200_000, orderedKept: 1_000_000, orderedWaiting: 100_000, orderedFresh: 20_000, orderedCap: 30 * time.Second},
}

// workloads in the order they run.
var workloads = []string{"W1", "W1b", "W2", "W3", "Idle", "Burst", "Retention", "Ops", "Hooks", "Ordered"}

const (
	libSchema   = "bench_lib"
	floorSchema = "bench_floor"
)

// bench is what every workload needs.
type bench struct {
	size     size
	reps     int  // repetitions of each measurement
	repsSet  bool // -reps was given: no workload lowers reps
	dbURL    string
	lib      *pgxpool.Pool // search_path bench_lib: the library's table
	floor    *pgxpool.Pool // search_path bench_floor: the floors' table
	log      *slog.Logger
	out      io.Writer
	canCkpt  bool           // the role may run CHECKPOINT
	libOpts  []inbox.Option // added to the library's options (Hooks)
	summary  []summaryLine
	exitCode int
}

func main() {
	worker := flag.Bool("worker", false, "internal: run as a W3 worker process")
	workerOut := flag.String("worker-out", "", "internal: file a W3 worker writes its handler runs to")
	sizeFlag := flag.String("size", "small", "small (CI smoke test, about a minute) or full (the real measurement)")
	only := flag.String("only", "", "comma-separated workloads to run: "+strings.Join(workloads, ","))
	reps := flag.Int("reps", 0, "repetitions of each measurement (default 5 at -size full, 3 at -size small)")
	serverURL := flag.String("url", "", "PostgreSQL server URL to create the benchmark database on (default: pgserver.Find)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: inboxbench [-size small|full] [-reps N] [-only %s] [-url URL]\n", strings.Join(workloads, ","))
		flag.VisitAll(func(f *flag.Flag) {
			if !strings.HasPrefix(f.Name, "worker") {
				fmt.Fprintf(flag.CommandLine.Output(), "  -%s\t%s (default %q)\n", f.Name, f.Usage, f.DefValue)
			}
		})
	}
	flag.Parse()

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if *worker {
		if err := runWorker(ctx, *workerOut); err != nil {
			fmt.Fprintf(os.Stderr, "inboxbench worker: %v\n", err)
			os.Exit(1)
		}
		return
	}

	sz, ok := sizes[*sizeFlag]
	if !ok {
		fmt.Fprintf(os.Stderr, "inboxbench: -size must be small or full, not %q\n", *sizeFlag)
		os.Exit(2)
	}
	selected, err := parseOnly(*only)
	if err != nil {
		fmt.Fprintf(os.Stderr, "inboxbench: %v\n", err)
		os.Exit(2)
	}
	if *reps < 0 {
		fmt.Fprintf(os.Stderr, "inboxbench: -reps must be positive, not %d\n", *reps)
		os.Exit(2)
	}
	code, err := run(ctx, sz, *reps, selected, *serverURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "inboxbench: %v\n", err)
		os.Exit(1)
	}
	os.Exit(code)
}

// parseOnly returns the workloads -only selects, in running order.
func parseOnly(only string) ([]string, error) {
	if strings.TrimSpace(only) == "" {
		return workloads, nil
	}
	want := map[string]bool{}
	for f := range strings.SplitSeq(only, ",") {
		f = strings.TrimSpace(f)
		i := slices.IndexFunc(workloads, func(w string) bool { return strings.EqualFold(w, f) })
		if i < 0 {
			return nil, fmt.Errorf("-only: unknown workload %q; choose from %s", f, strings.Join(workloads, ","))
		}
		want[workloads[i]] = true
	}
	var out []string
	for _, w := range workloads {
		if want[w] {
			out = append(out, w)
		}
	}
	return out, nil
}

func run(ctx context.Context, sz size, reps int, selected []string, serverURL string) (code int, err error) {
	started := time.Now()
	setupCtx, cancelSetup := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelSetup()
	var srv *pgserver.Server
	if serverURL != "" {
		srv = &pgserver.Server{URL: serverURL, Source: "-url"}
	} else if srv, err = pgserver.Find(setupCtx); err != nil {
		return 1, err
	}
	defer srv.Close()
	dbURL, drop, err := srv.CreateDatabase(setupCtx)
	if err != nil {
		return 1, err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err = errors.Join(err, drop(dctx))
	}()

	b := &bench{
		size:    sz,
		reps:    cmp.Or(reps, sz.reps),
		repsSet: reps > 0,
		dbURL:   dbURL,
		log:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		out:     os.Stdout,
	}
	if b.lib, err = b.schemaPool(setupCtx, libSchema, true); err != nil {
		return 1, err
	}
	defer b.lib.Close()
	if b.floor, err = b.schemaPool(setupCtx, floorSchema, true); err != nil {
		return 1, err
	}
	defer b.floor.Close()
	_, ckErr := b.lib.Exec(setupCtx, "CHECKPOINT")
	b.canCkpt = ckErr == nil

	var version string
	_ = b.lib.QueryRow(setupCtx, "SHOW server_version").Scan(&version)
	var fsync, syncCommit, sharedBuffers string
	_ = b.lib.QueryRow(setupCtx, "SELECT current_setting('fsync'), current_setting('synchronous_commit'), current_setting('shared_buffers')").
		Scan(&fsync, &syncCommit, &sharedBuffers)
	host, _ := os.Hostname()
	b.printf("inboxbench -size %s: %s\n", sz.name, strings.Join(selected, ","))
	b.printf("server: PostgreSQL %s from %s (fsync=%s, synchronous_commit=%s, shared_buffers=%s)\n",
		version, srv.Source, fsync, syncCommit, sharedBuffers)
	b.printf("machine: %s, %d CPUs, load average %s (other processes on the machine skew the figures); pools: pgxpool defaults (MaxConns=%d); library options: defaults + quiet logger\n",
		host, numCPU(), loadAvg(), b.lib.Config().MaxConns)
	b.printf("method: schema %s holds the library's table, schema %s the same-shape floors' (same migration), %s\n"+
		"  the minimal floor's; tables are truncated between runs; after each bulk load VACUUM ANALYZE runs (as caught-up\n"+
		"  autovacuum would)%s, except in Burst and Retention; each figure is the median (min–max) of %d repetitions (-reps) in which\n"+
		"  library and floor runs take turns; ratios are ratios of medians.\n",
		libSchema, floorSchema, minSchema, map[bool]string{true: " and a CHECKPOINT", false: " (CHECKPOINT not permitted)"}[b.canCkpt], b.reps)

	var took []string
	for _, w := range selected {
		if err := ctx.Err(); err != nil {
			return 1, err
		}
		wStart := time.Now()
		var werr error
		switch w {
		case "W1":
			werr = b.w1(ctx)
		case "W1b":
			werr = b.w1b(ctx)
		case "W2":
			werr = b.w2(ctx)
		case "W3":
			werr = b.w3(ctx)
		case "Idle":
			werr = b.idle(ctx)
		case "Burst":
			werr = b.burst(ctx)
		case "Retention":
			werr = b.retention(ctx)
		case "Hooks":
			werr = b.hooks(ctx)
		case "Ops":
			werr = b.ops(ctx)
		case "Ordered":
			werr = b.ordered(ctx)
		}
		if werr != nil {
			return 1, fmt.Errorf("%s: %w", w, werr)
		}
		took = append(took, fmt.Sprintf("%s %.0fs", w, time.Since(wStart).Seconds()))
	}
	b.printSummary(time.Since(started), strings.Join(took, ", "))
	return b.exitCode, nil
}

// schemaPool returns a pool whose connections work in schema, which it
// creates afresh with [newSchema].
func (b *bench) schemaPool(ctx context.Context, schema string, migrate bool) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(b.dbURL)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := newSchema(ctx, pool, schema, migrate); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// dropSchema drops schema, if it exists, with all it holds.
func dropSchema(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		return fmt.Errorf("drop schema %s: %w", schema, err)
	}
	return nil
}

// newSchema creates schema, dropping any earlier one with all it holds,
// and if migrate, migrates the inbox into it through pool (whose
// search_path must be schema). Its tables have no statistics yet.
func newSchema(ctx context.Context, pool *pgxpool.Pool, schema string, migrate bool) error {
	if err := dropSchema(ctx, pool, schema); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return fmt.Errorf("create schema %s: %w", schema, err)
	}
	if migrate {
		if err := inbox.Migrate(ctx, pool); err != nil {
			return fmt.Errorf("migrate schema %s: %w", schema, err)
		}
	}
	if migrate && (schema == floorSchema || schema == burstFloorSchema) {
		// A floor is hand-written SQL on a plain table: without the
		// library's counting triggers, which the library's figures pay for.
		for _, name := range []string{"tally_insert", "tally_update", "tally_delete", "tally_truncate", "history"} {
			if _, err := pool.Exec(ctx, "DROP TRIGGER inbox_records_"+name+" ON inbox_records"); err != nil {
				return fmt.Errorf("schema %s: drop the counting trigger: %w", schema, err)
			}
		}
	}
	return nil
}

func (b *bench) printf(format string, args ...any) {
	fmt.Fprintf(b.out, format, args...)
}

// reset empties the inbox tables of pool and leaves them as a caught-up
// autovacuum would.
func (b *bench) reset(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, "TRUNCATE inbox_records, inbox_workers"); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	return b.settle(ctx, pool)
}

// settle runs VACUUM ANALYZE on the inbox table after a bulk load, then a
// CHECKPOINT so the next timed phase does not pay for earlier writes.
func (b *bench) settle(ctx context.Context, pool *pgxpool.Pool) error {
	return b.settleTable(ctx, pool, "inbox_records")
}

// settleTable runs VACUUM ANALYZE on table, then a CHECKPOINT.
func (b *bench) settleTable(ctx context.Context, pool *pgxpool.Pool, table string) error {
	if _, err := pool.Exec(ctx, "VACUUM ANALYZE "+pgx.Identifier{table}.Sanitize()); err != nil {
		return fmt.Errorf("vacuum analyze: %w", err)
	}
	return b.checkpoint(ctx, pool)
}

// checkpoint runs a CHECKPOINT if the role may.
func (b *bench) checkpoint(ctx context.Context, pool *pgxpool.Pool) error {
	if b.canCkpt {
		if _, err := pool.Exec(ctx, "CHECKPOINT"); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
	}
	return nil
}
