package inbox_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// The benchmarks store b.N events of one type with one handler, so one row
// per event, in Set batches of 1,000. Run them with a fixed count, e.g.
//
//	go test -run '^$' -bench . -benchtime 20000x
//
// cmd/inboxbench measures the same against raw-SQL floors.

const benchSetBatch = 1000

// benchBatches returns n records in batches of at most benchSetBatch.
func benchBatches(b testing.TB, n int) [][]*inbox.Record {
	b.Helper()
	var batches [][]*inbox.Record
	for start := 0; start < n; start += benchSetBatch {
		batch := make([]*inbox.Record, min(benchSetBatch, n-start))
		for i := range batch {
			batch[i] = testenv.Record(b, uuid.New(), "bench", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
		}
		batches = append(batches, batch)
	}
	return batches
}

// benchSet stores batches with Set.
func benchSet(b *testing.B, c *inbox.Client, batches [][]*inbox.Record) {
	b.Helper()
	for _, batch := range batches {
		if err := c.Set(context.Background(), batch...); err != nil {
			b.Fatalf("Set: %v", err)
		}
	}
}

// BenchmarkSet measures Set: b.N events in batches of 1,000, each batch one
// call and one transaction.
func BenchmarkSet(b *testing.B) {
	pool := testenv.MigratedPool(b)
	reg := inbox.NewRegistry()
	reg.On("bench", inbox.HandlerFunc("noop", func(context.Context, []byte) error { return nil }))
	ib, err := inbox.New(pool, reg, inbox.WithLogger(testenv.Logger(b)))
	if err != nil {
		b.Fatal(err)
	}
	batches := benchBatches(b, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	benchSet(b, ib.Client(), batches)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkDrain measures processing: b.N events are stored first, then
// the timer runs from Start until a no-op handler has run for every event
// and no row is left unfinished.
func BenchmarkDrain(b *testing.B) {
	pool := testenv.MigratedPool(b)
	var runs atomic.Int64
	all := make(chan struct{})
	target := int64(b.N)
	reg := inbox.NewRegistry()
	reg.On("bench", inbox.HandlerFunc("noop", func(context.Context, []byte) error {
		if runs.Add(1) == target {
			close(all)
		}
		return nil
	}))
	ib, err := inbox.New(pool, reg, inbox.WithLogger(testenv.Logger(b)))
	if err != nil {
		b.Fatal(err)
	}
	benchSet(b, ib.Client(), benchBatches(b, b.N))
	if _, err := pool.Exec(context.Background(), "VACUUM ANALYZE inbox_records"); err != nil {
		b.Fatal(err)
	}

	b.ReportAllocs()
	b.ResetTimer()
	if err := ib.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	select {
	case <-all:
	case <-time.After(10 * time.Minute):
		b.Fatalf("%d of %d handler runs after 10 minutes", runs.Load(), b.N)
	}
	if err := testenv.Poll(time.Minute, func() (bool, error) { return !unfinished(b, pool), nil }); err != nil {
		b.Fatalf("waiting for every row to be done: %v", err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ib.Stop(ctx); err != nil {
		b.Fatalf("Stop: %v", err)
	}
	counts, err := ib.Counts(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if counts[inbox.Done] != b.N || runs.Load() != target {
		b.Fatalf("%d handler runs, counts %v; want %d runs and %d done", runs.Load(), counts, b.N, b.N)
	}
}

// unfinished reports whether a row is still to be processed or running.
func unfinished(b *testing.B, pool *pgxpool.Pool) bool {
	b.Helper()
	var busy bool
	err := pool.QueryRow(context.Background(),
		`SELECT EXISTS (SELECT 1 FROM inbox_records WHERE status IN ('', 'failed', 'progress'))`).Scan(&busy)
	if err != nil {
		b.Fatal(err)
	}
	return busy
}

// BenchmarkSetBacklog measures what WithMaxBacklog costs Set: calls of 1
// and of 100 records through an Inbox with a backlog limit no call
// reaches (msgs/s, in records per second), beside an Inbox without one
// (floor-msgs/s), both storing into the same table. Each of five turns
// makes b.N calls through each, the two taking turns call by call (which
// goes first alternating), so that both see the same machine and table;
// the metrics are the medians of the turns, and ratio is on over off. No
// worker runs, so the limited Client reads the counters every 500 ms and
// folds the deltas when they pile up, as in a process that only stores
// events.
//
//	go test -run '^$' -bench SetBacklog -benchtime 1000x -v
func BenchmarkSetBacklog(b *testing.B) {
	const turns = 5
	for _, size := range []int{1, 100} {
		b.Run(fmt.Sprintf("records=%d", size), func(b *testing.B) {
			pool := testenv.MigratedPool(b)
			reg := inbox.NewRegistry()
			reg.On("bench", inbox.HandlerFunc("noop", func(context.Context, []byte) error { return nil }))
			off, err := inbox.New(pool, reg, inbox.WithLogger(testenv.Logger(b)))
			if err != nil {
				b.Fatal(err)
			}
			on, err := inbox.New(pool, reg, inbox.WithLogger(testenv.Logger(b)), inbox.WithMaxBacklog(math.MaxInt32))
			if err != nil {
				b.Fatal(err)
			}
			clients := [2]*inbox.Client{off.Client(), on.Client()}
			var rates [2][]float64
			var log strings.Builder
			b.ResetTimer()
			for turn := range turns {
				b.StopTimer()
				calls := make([][]*inbox.Record, 2*b.N)
				for i := range calls {
					calls[i] = make([]*inbox.Record, size)
					for j := range calls[i] {
						calls[i][j] = testenv.Record(b, uuid.New(), "bench", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
					}
				}
				b.StartTimer()
				var spent [2]time.Duration
				for i := range b.N {
					for k := range 2 {
						side := (i + turn + k) % 2 // which goes first alternates
						start := time.Now()
						if err := clients[side].Set(context.Background(), calls[2*i+k]...); err != nil {
							b.Fatalf("Set: %v", err)
						}
						spent[side] += time.Since(start)
					}
				}
				for side := range 2 {
					rates[side] = append(rates[side], float64(b.N*size)/spent[side].Seconds())
				}
				fmt.Fprintf(&log, "\n  turn %d: off %8.0f records/s, on %8.0f records/s, ratio %.3f",
					turn+1, rates[0][turn], rates[1][turn], rates[1][turn]/rates[0][turn])
			}
			b.StopTimer()
			floor, subject := testenv.MedianOf(rates[0]), testenv.MedianOf(rates[1])
			b.ReportMetric(subject, "msgs/s")
			b.ReportMetric(floor, "floor-msgs/s")
			b.ReportMetric(subject/floor, "ratio")
			b.Logf("%d calls of %d records per side and turn (medians: off %.0f records/s, on %.0f records/s, ratio %.3f):%s",
				b.N, size, floor, subject, subject/floor, log.String())
		})
	}
}
