// Package chaos_test proves that the inbox loses nothing and applies
// nothing twice while its worker processes are killed and its database
// crashes.
//
// TestChaos starts a throwaway PostgreSQL cluster, 4 worker processes and
// 2 writer processes (the test binary re-run in a child role). While the
// writers store events with duplicates, retrying every failed Set, a worker
// is killed with SIGKILL and restarted every 2 seconds, and PostgreSQL is
// stopped in immediate mode and restarted twice. Once everything is
// processed, the workers are stopped gracefully and the tables are checked:
// every event sent has all its rows, each done — or dead exactly where its
// handler always fails —, each transactional effect exactly once and each
// plain handler run at least once.
//
// About a quarter of the events are ordered: ledger events, each with an
// ordering key that one writer sends in increasing sequence numbers. Their
// handlers fail some first attempts, so retries hold back a key's later
// rows. Per key, the transactional handler's effects must be exactly the
// sequence 0, 1, 2, ... in the order they were inserted, and the plain
// handler's runs, in the order they started, must never go back (a re-run
// of the same row may repeat its number) nor start before the row before
// them was done.
//
// Run the CI size (10,000 events, under 90 s with -race on 2 cores):
//
//	go test -race -count=1 ./chaos/ -v
//
// Run the big size (100,000 events, about 3 minutes here, with or without
// -race):
//
//	INBOX_CHAOS=big go test -count=1 -timeout 40m ./chaos/ -v
//
// INBOX_CHAOS_SEED=N repeats a run's event ids; INBOX_CHAOS_LOGS=DIR keeps
// the child processes' logs in DIR.
package chaos_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/pgserver"
)

// chaosSize is how big a run is.
type chaosSize struct {
	name        string
	events      int
	writeFor    time.Duration // the writers spread their batches over this
	drainWithin time.Duration // after the writers finish, everything is processed within this
}

var (
	smallSize = chaosSize{name: "small", events: 10_000, writeFor: 20 * time.Second, drainWithin: 40 * time.Second}
	bigSize   = chaosSize{name: "big", events: 100_000, writeFor: 150 * time.Second, drainWithin: 20 * time.Minute}
)

// The chaos.
const (
	workers        = 4
	writers        = 2
	writeBatch     = 100 // new events per Set; 10 % duplicates come on top
	maxAttempts    = 25
	killEvery      = 2 * time.Second
	pgDownFor      = 1500 * time.Millisecond
	stopWithin     = 30 * time.Second
	progressEvery  = 2 * time.Second
	pollEvery      = 200 * time.Millisecond
	leaseExpiredIn = "lease expired"
)

// pgOutagesAt are the points of the write phase at which PostgreSQL is
// stopped in immediate mode.
var pgOutagesAt = []float64{0.25, 0.60}

func TestChaos(t *testing.T) {
	size := smallSize
	switch v := os.Getenv("INBOX_CHAOS"); v {
	case "", "small":
	case "big":
		size = bigSize
	default:
		t.Fatalf("INBOX_CHAOS=%q: want small or big", v)
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("INBOX_CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("INBOX_CHAOS_SEED: %v", err)
		}
	}
	t.Logf("chaos %s: %d events, %d writers over %v, %d workers, seed %d (INBOX_CHAOS_SEED=%d repeats it)",
		size.name, size.events, writers, size.writeFor, workers, seed, seed)
	began := time.Now()
	goroutines := runtime.NumGoroutine()
	ctx := t.Context()

	dir := t.TempDir()
	if keep := os.Getenv("INBOX_CHAOS_LOGS"); keep != "" {
		dir = keep // keep the child processes' logs after the test
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cluster, err := pgserver.StartCluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Should this process die before its cleanup, the cluster's own guard
	// stops and removes it.
	t.Cleanup(func() {
		if err := cluster.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	pool, err := newPool(cluster.URL, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := setup(ctx, pool); err != nil {
		t.Fatal(err)
	}
	ps := newProcs(t, dir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("child process logs:\n%s", ps.tails(40))
			if b, err := os.ReadFile(filepath.Join(cluster.Dir, "postgres.log")); err == nil {
				t.Logf("PostgreSQL log, last lines:\n%s", tail(string(b), 30))
			}
		}
	})

	// Workers, each slot restarted after every kill.
	var mu sync.Mutex
	slots := make([]*proc, workers)
	gen := 0
	startWorker := func(slot int) error { // with mu held
		gen++
		p, err := ps.start(childConfig{Role: roleWorker, Name: fmt.Sprintf("worker%d-gen%03d", slot, gen),
			URL: cluster.URL, MaxAttempts: maxAttempts})
		if err == nil {
			slots[slot] = p
		}
		return err
	}
	mu.Lock()
	for slot := range workers {
		if err := startWorker(slot); err != nil {
			mu.Unlock()
			t.Fatal(err)
		}
	}
	mu.Unlock()

	// Writers.
	writeStart := time.Now()
	var writerProcs []*proc
	for w := range writers {
		p, err := ps.start(childConfig{Role: roleWriter, Name: fmt.Sprintf("writer%d", w), URL: cluster.URL,
			Writer: w, Writers: writers, Seed: seed, Events: size.events, BatchSize: writeBatch, MaxAttempts: maxAttempts,
			Duration:    size.writeFor,
			AckedPath:   filepath.Join(dir, fmt.Sprintf("writer%d.acked", w)),
			SummaryPath: filepath.Join(dir, fmt.Sprintf("writer%d.json", w))})
		if err != nil {
			t.Fatal(err)
		}
		writerProcs = append(writerProcs, p)
	}

	// Chaos: the killer runs until the inbox has drained; the database
	// outages happen during the write phase.
	var kills, pgRestarts atomic.Int64
	var pgDown atomic.Int64 // nanoseconds PostgreSQL was unreachable, in all
	chaosErrs := make(chan error, 100)
	report := func(err error) {
		select {
		case chaosErrs <- err:
		default:
		}
	}
	killCtx, stopKilling := context.WithCancel(ctx)
	defer stopKilling()
	var killer sync.WaitGroup
	pgDone := make(chan struct{})
	// On an early failure, end the chaos before the children are killed,
	// so no worker is restarted behind the cleanup's back.
	t.Cleanup(func() {
		stopKilling()
		killer.Wait()
		<-pgDone
	})
	killer.Go(func() {
		tick := time.NewTicker(killEvery)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-killCtx.Done():
				return
			case <-tick.C:
			}
			slot := i % workers
			mu.Lock()
			p := slots[slot]
			if p.exited() {
				report(fmt.Errorf("%s exited by itself: %v", p.name, p.err))
			}
			p.kill()
			kills.Add(1)
			err := startWorker(slot)
			mu.Unlock()
			if err != nil {
				report(err)
				return
			}
		}
	})
	go func() {
		defer close(pgDone)
		for _, at := range pgOutagesAt {
			timer := time.NewTimer(time.Until(writeStart.Add(time.Duration(at * float64(size.writeFor)))))
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
			stopAt := time.Since(began)
			down, err := outage(cluster)
			if err != nil {
				report(err)
				return
			}
			pgRestarts.Add(1)
			pgDown.Add(int64(down))
			t.Logf("%5.1fs PostgreSQL stopped (immediate) at %.0f %% of the write phase, up again after %.1fs",
				stopAt.Seconds(), 100*at, down.Seconds())
		}
	}()

	// Wait for the writers, then for the outages to be over.
	var summaries []writerSummary
	for w, p := range writerProcs {
		if err := p.wait(size.writeFor + 5*time.Minute); err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		s, err := readSummary(filepath.Join(dir, fmt.Sprintf("writer%d.json", w)))
		if err != nil {
			t.Fatal(err)
		}
		summaries = append(summaries, s)
	}
	writeDone := time.Now()
	t.Logf("%5.1fs writers done in %.1fs", time.Since(began).Seconds(), writeDone.Sub(writeStart).Seconds())
	<-pgDone

	// Drain: poll until no row is waiting or running.
	deadline := time.Now().Add(size.drainWithin)
	var lastPrint time.Time
	var last map[inbox.Status]int
	for {
		counts, err := statusCounts(ctx, pool)
		if err == nil {
			last = counts
			pending := counts[inbox.Null] + counts[inbox.Failed] + counts[inbox.Progress]
			if pending == 0 || time.Since(lastPrint) >= progressEvery {
				t.Logf("%5.1fs drain: %s, %s, %d workers killed so far",
					time.Since(began).Seconds(), formatCounts(counts), orderedBacklog(ctx, pool), kills.Load())
				lastPrint = time.Now()
			}
			if pending == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not drained within %v of the writers finishing: last counts %s, last error %v; ordering keys with the most rows unfinished:%s",
				size.drainWithin, formatCounts(last), err, stuckKeys(ctx, pool))
		}
		time.Sleep(pollEvery)
	}
	drainDone := time.Now()
	stopKilling()
	killer.Wait()
	close(chaosErrs)
	for err := range chaosErrs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Graceful stop: wait until each live worker has started, then SIGTERM.
	mu.Lock()
	live := append([]*proc(nil), slots...)
	mu.Unlock()
	if err := waitStarted(ctx, pool, live, stopWithin); err != nil {
		t.Fatal(err)
	}
	for _, p := range live {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("SIGTERM %s: %v", p.name, err)
		}
	}
	for _, p := range live {
		if err := p.wait(stopWithin); err != nil {
			t.Errorf("%s after SIGTERM: %v; want exit status 0", p.name, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	var beating int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_workers WHERE pid = ANY($1)`, pids(live)).Scan(&beating); err != nil {
		t.Fatal(err)
	}
	if beating != 0 {
		t.Errorf("%d gracefully stopped workers left their heartbeat rows", beating)
	}

	// Check.
	for _, a := range ps.alarming() {
		t.Errorf("child process log: %s", a)
	}
	ids := eventIDs(seed, size.events)
	acked, err := readAcked(dir, writers)
	if err != nil {
		t.Fatal(err)
	}
	res := verify(t, ctx, pool, ids, ledgerPlan(ids, writers), acked)

	var dups, retries int
	for _, s := range summaries {
		dups += s.Duplicates
		retries += s.Retries
	}
	end := time.Now()
	t.Logf(`chaos summary (%s, seed %d):
  events                %d sent by %d writers (%d rows), %d duplicates sent on top
  Set retries           %d (each a failed Set retried with the same batch)
  worker processes      %d at a time, %d killed with SIGKILL and restarted (every %v)
  PostgreSQL restarts   %d (immediate stop, kept down %v, unreachable %.1fs in all)
  rescued leases        %d rows whose last_error says %q; %d rescues logged by workers
  deadlocks             %d logged by children (an alarm: every writer takes key locks before row locks)
  total attempts        %d (%d done rows needed more than one)
  dead rows             %d, all where the handler always fails, each after %d attempts
  max attempts          %d allowed (WithMaxRetryAttempt: a healthy row may lose %d attempts to kills and outages); seen on a done row %d, on any row %d
  plain handler runs    %d for %d done rows (%d re-runs: at least once)
  tx handler effects    %d for %d rows (exactly once)
  ordered (ledger)      %d events on %d ordering keys, 2 handlers: %d effects in order (exactly once), %d runs in order (%d re-runs);
                        %d rows fail their first attempt by design, %d rows needed more than one
  elapsed               %.1fs: cluster start %.1fs, write %.1fs, drain %.1fs, stop and check %.1fs`,
		size.name, seed,
		len(ids), writers, res.rows, dups,
		retries,
		workers, kills.Load(), killEvery,
		pgRestarts.Load(), pgDownFor, time.Duration(pgDown.Load()).Seconds(),
		res.rescued, leaseExpiredIn, ps.countInLogs("claimed a row whose lease had expired"),
		ps.countInLogs("deadlock detected"),
		res.attempts, res.retriedDone,
		res.dead, maxAttempts,
		maxAttempts, maxAttempts-1, res.maxDoneAttempts, res.maxAttempts,
		res.plainRuns, res.plainDone, res.plainReruns,
		res.effects, res.txRows,
		res.ledger.events, res.ledger.keys, res.ledger.effects, res.ledger.runs, res.ledger.reruns,
		res.ledger.failedFirst, res.ledger.retried,
		end.Sub(began).Seconds(), writeStart.Sub(began).Seconds(), writeDone.Sub(writeStart).Seconds(),
		drainDone.Sub(writeDone).Seconds(), end.Sub(drainDone).Seconds())
	if pgRestarts.Load() != int64(len(pgOutagesAt)) {
		t.Errorf("PostgreSQL was restarted %d times, want %d", pgRestarts.Load(), len(pgOutagesAt))
	}
	if kills.Load() == 0 {
		t.Error("no worker was killed")
	}

	// Nothing of the test may be left running.
	pool.Close()
	if err := waitGoroutines(goroutines, 10*time.Second); err != nil {
		t.Error(err)
	}
}

// setup migrates the inbox and creates the handlers' side-effect tables,
// deliberately without unique constraints.
func setup(ctx context.Context, pool *pgxpool.Pool) error {
	if err := inbox.Migrate(ctx, pool); err != nil {
		return err
	}
	_, err := pool.Exec(ctx, `
CREATE TABLE effects (
    event_id    uuid        NOT NULL,
    handler_key text        NOT NULL,
    pid         integer     NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE plain_runs (
    event_id    uuid        NOT NULL,
    handler_key text        NOT NULL,
    pid         integer     NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);`+ledgerTables)
	return err
}

// outage stops PostgreSQL in immediate mode (a crash: the next start runs
// recovery), keeps it down for pgDownFor and starts it again.
// It returns how long PostgreSQL was unreachable.
func outage(c *pgserver.Cluster) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := c.Stop(ctx, "immediate"); err != nil {
		return 0, err
	}
	time.Sleep(pgDownFor) // the outage itself
	var err error
	for range 3 {
		if err = c.Start(ctx); err == nil {
			return time.Since(start), nil
		}
	}
	return 0, err
}

func statusCounts(ctx context.Context, pool *pgxpool.Pool) (map[inbox.Status]int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := pool.Query(ctx, `SELECT status, count(*) FROM inbox_records GROUP BY status`)
	if err != nil {
		return nil, err
	}
	counts := make(map[inbox.Status]int)
	var status string
	var n int
	for rows.Next() {
		if err := rows.Scan(&status, &n); err != nil {
			rows.Close()
			return nil, err
		}
		counts[inbox.Status(status)] = n
	}
	return counts, rows.Err()
}

func formatCounts(c map[inbox.Status]int) string {
	var parts []string
	total := 0
	for _, s := range inbox.Statuses() {
		parts = append(parts, fmt.Sprintf("%s=%d", s, c[s]))
		total += c[s]
	}
	return fmt.Sprintf("%s (rows %d)", strings.Join(parts, " "), total)
}

// waitStarted waits until every process in live has a live heartbeat row,
// that is, its Inbox has started (and it handles SIGTERM).
func waitStarted(ctx context.Context, pool *pgxpool.Pool, live []*proc, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		started := make(map[int]bool)
		rows, err := pool.Query(ctx, `SELECT pid FROM inbox_workers WHERE expires_at >= now()`)
		if err == nil {
			var pid int
			for rows.Next() {
				if err = rows.Scan(&pid); err != nil {
					break
				}
				started[pid] = true
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		var missing []string
		for _, p := range live {
			if p.exited() {
				return fmt.Errorf("%s exited by itself: %v", p.name, p.err)
			}
			if !started[p.cmd.Process.Pid] {
				missing = append(missing, p.name)
			}
		}
		if err == nil && len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("workers %v not started within %v (last error %v)", missing, within, err)
		}
		time.Sleep(pollEvery)
	}
}

func pids(ps []*proc) []int32 {
	out := make([]int32, len(ps))
	for i, p := range ps {
		out[i] = int32(p.cmd.Process.Pid)
	}
	return out
}

// waitGoroutines waits until no more goroutines run than at the start.
func waitGoroutines(baseline int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		n := runtime.NumGoroutine()
		if n <= baseline {
			return nil
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			return fmt.Errorf("%d goroutines left running, %d at the start:\n%s", n, baseline, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readSummary(path string) (writerSummary, error) {
	var s writerSummary
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("writer summary: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("writer summary %s: %w", path, err)
	}
	return s, nil
}

// readAcked returns the ids whose Set the writers saw succeed.
func readAcked(dir string, n int) (map[uuid.UUID]bool, error) {
	acked := make(map[uuid.UUID]bool)
	for w := range n {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("writer%d.acked", w)))
		if err != nil {
			return nil, err
		}
		if len(b)%16 != 0 {
			return nil, errors.New("acknowledged-id file is not a whole number of ids")
		}
		for i := 0; i < len(b); i += 16 {
			acked[uuid.UUID(b[i:i+16])] = true
		}
	}
	return acked, nil
}
