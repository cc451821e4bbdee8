package inboxotel_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/pgserver"
)

// testDatabaseURL is the database this test run created; each test works in
// a schema of its own inside it.
var testDatabaseURL string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := pgserver.Find(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "inboxotel tests need PostgreSQL: %v\n", err)
		return 1
	}
	defer srv.Close()
	url, drop, err := srv.CreateDatabase(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "inboxotel tests: create database: %v\n", err)
		return 1
	}
	defer drop(context.Background())
	testDatabaseURL = url
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "inboxotel tests: goroutines still running after all tests:\n%s\n", leaked)
			return 1
		}
	}
	return code
}

// leakedGoroutines waits up to d for every goroutine running the inbox's
// code or a pgx pool to end, and returns the stacks of those that remain.
func leakedGoroutines(d time.Duration) string {
	var leaked []string
	_ = poll(d, func() (bool, error) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		leaked = leaked[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "leakedGoroutines") {
				continue
			}
			if strings.Contains(g, "github.com/pginbox/inbox.(*") || strings.Contains(g, "github.com/pginbox/inbox/otel") ||
				strings.Contains(g, "pgxpool.(*Pool)") {
				leaked = append(leaked, g)
			}
		}
		return len(leaked) == 0, nil
	})
	return strings.Join(leaked, "\n\n")
}

var schemaSeq atomic.Int64

// newPool gives a test its own migrated schema and a pool working in it.
func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	schema := fmt.Sprintf("t%d_%s", schemaSeq.Add(1), strings.ReplaceAll(uuid.NewString()[:8], "-", ""))
	admin, err := pgxpool.New(ctx, testDatabaseURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	_, err = admin.Exec(ctx, "CREATE SCHEMA "+schema)
	admin.Close()
	if err != nil {
		t.Fatalf("create schema: %v", err)
	}
	cfg, err := pgxpool.ParseConfig(testDatabaseURL)
	if err != nil {
		t.Fatalf("parse url: %v", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.MaxConns = 10
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	if err := inbox.Migrate(ctx, pool); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return pool
}

// quiet is a logger for tests: warnings and errors only, to the test log.
func quiet(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// fast are options that make a test's inbox react in milliseconds.
func fast(t testing.TB, more ...inbox.Option) []inbox.Option {
	return append([]inbox.Option{
		inbox.WithIterationRate(20 * time.Millisecond),
		inbox.WithRetryBackoff(5*time.Millisecond, 20*time.Millisecond),
		inbox.WithLease(time.Second),
		inbox.WithLogger(quiet(t)),
	}, more...)
}

// start starts an inbox with ctx and stops it when the test ends.
func start(t testing.TB, ctx context.Context, pool *pgxpool.Pool, reg *inbox.Registry, opts ...inbox.Option) *inbox.Inbox {
	t.Helper()
	ib, err := inbox.New(pool, reg, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := ib.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ib.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return ib
}

// eventually polls cond every 10ms until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	if err := poll(within, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func poll(within time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(within)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func record(t testing.TB, id uuid.UUID, eventType, payload string) *inbox.Record {
	t.Helper()
	r, err := inbox.NewRecord(id, eventType, []byte(payload))
	if err != nil {
		t.Fatalf("NewRecord: %v", err)
	}
	return r
}

// meter is a MeterProvider with a ManualReader, for tests to collect.
type meter struct {
	*sdkmetric.MeterProvider
	reader *sdkmetric.ManualReader
}

func newMeter(t testing.TB) meter {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return meter{mp, r}
}

// collect returns what the meter has now.
func (m meter) collect(t testing.TB) collected {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := m.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	c := collected{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			c[mt.Name] = mt
		}
	}
	return c
}

// collected are collected metrics by name.
type collected map[string]metricdata.Metrics

// matches reports whether set has every attribute of want.
func matches(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// sum adds up the points of an int64 counter or up-down counter whose
// attributes include want.
func (c collected) sum(name string, want ...attribute.KeyValue) int64 {
	s, _ := c[name].Data.(metricdata.Sum[int64])
	var n int64
	for _, p := range s.DataPoints {
		if matches(p.Attributes, want) {
			n += p.Value
		}
	}
	return n
}

// count adds up the counts of a histogram's points whose attributes
// include want.
func (c collected) count(name string, want ...attribute.KeyValue) uint64 {
	h, _ := c[name].Data.(metricdata.Histogram[float64])
	var n uint64
	for _, p := range h.DataPoints {
		if matches(p.Attributes, want) {
			n += p.Count
		}
	}
	return n
}

// gauge returns the value of a float64 gauge's point whose attributes
// include want, and whether there is one.
func (c collected) gauge(name string, want ...attribute.KeyValue) (float64, bool) {
	g, _ := c[name].Data.(metricdata.Gauge[float64])
	for _, p := range g.DataPoints {
		if matches(p.Attributes, want) {
			return p.Value, true
		}
	}
	return 0, false
}

// points returns the number of points of a metric.
func (c collected) points(name string) int {
	switch d := c[name].Data.(type) {
	case metricdata.Sum[int64]:
		return len(d.DataPoints)
	case metricdata.Gauge[float64]:
		return len(d.DataPoints)
	case metricdata.Histogram[float64]:
		return len(d.DataPoints)
	}
	return 0
}
