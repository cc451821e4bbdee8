package inboxotel

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

var twoPairs = []inbox.HandlerStats{
	{EventType: "order", HandlerKey: "a", Pending: 3, Lag: 1500 * time.Millisecond},
	{EventType: "order", HandlerKey: "b", Done: 7, Dead: 1},
}

// TestStatsReadOncePerTTL: collections that overlap share one read, and
// collections within the ttl reuse it.
func TestStatsReadOncePerTTL(t *testing.T) {
	var reads atomic.Int64
	release := make(chan struct{})
	c := &statsCache{ttl: time.Hour, log: slog.New(slog.DiscardHandler), read: func(context.Context) ([]inbox.HandlerStats, error) {
		reads.Add(1)
		<-release
		return twoPairs, nil
	}}
	const collectors = 20
	var wg sync.WaitGroup
	var good atomic.Int64
	for range collectors {
		wg.Go(func() {
			if s, ok := c.get(context.Background()); ok && len(s) == 2 {
				good.Add(1)
			}
		})
	}
	testenv.Eventually(t, 10*time.Second, "the read to start", func() (bool, error) { return reads.Load() > 0, nil })
	close(release)
	wg.Wait()
	if _, ok := c.get(context.Background()); !ok {
		t.Error("a collection within the ttl got nothing")
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads for %d collections within the ttl, want 1", n, collectors+1)
	}
	if good.Load() != collectors {
		t.Errorf("%d of %d collections got the figures", good.Load(), collectors)
	}
}

// TestStatsTTLZeroReadsEachTime: with ttl 0, every collection reads.
func TestStatsTTLZeroReadsEachTime(t *testing.T) {
	var reads atomic.Int64
	c := &statsCache{log: slog.New(slog.DiscardHandler), read: func(context.Context) ([]inbox.HandlerStats, error) {
		reads.Add(1)
		return twoPairs, nil
	}}
	for range 3 {
		c.get(context.Background())
	}
	if n := reads.Load(); n != 3 {
		t.Errorf("%d reads for 3 collections, want 3", n)
	}
}

// TestStatsWaiterGivesUp: a collection waiting for another's read returns
// when its own context ends.
func TestStatsWaiterGivesUp(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	c := &statsCache{log: slog.New(slog.DiscardHandler), read: func(context.Context) ([]inbox.HandlerStats, error) {
		close(started)
		<-release
		return twoPairs, nil
	}}
	done := make(chan struct{})
	go func() { defer close(done); c.get(context.Background()) }()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok := c.get(ctx); ok {
		t.Error("a waiter whose context ended got figures")
	}
	close(release)
	<-done
}

// TestStatsFailureReportsNothing: a read that fails (or panics) is logged
// and nothing is reported; the next read that succeeds reports again.
func TestStatsFailureReportsNothing(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	i, err := New(WithMeterProvider(mp), WithStatsTTL(0),
		WithLogger(slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))))
	if err != nil {
		t.Fatal(err)
	}
	var mode atomic.Int64 // 0 fails, 1 panics, 2 works
	unregister, err := i.ObserveAdmin(statsFunc(func(context.Context) ([]inbox.HandlerStats, error) {
		switch mode.Load() {
		case 0:
			return nil, errors.New("database down")
		case 1:
			panic("bug")
		}
		return twoPairs, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer unregister()
	points := func() (rows, lags int, rm metricdata.ResourceMetrics) {
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				switch d := m.Data.(type) {
				case metricdata.Sum[int64]:
					if m.Name == "inbox.rows" {
						rows = len(d.DataPoints)
					}
				case metricdata.Gauge[float64]:
					if m.Name == "inbox.lag" {
						lags = len(d.DataPoints)
					}
				}
			}
		}
		return rows, lags, rm
	}
	for m, what := range []string{"a failed read", "a panicking read"} {
		mode.Store(int64(m))
		if rows, lags, _ := points(); rows != 0 || lags != 0 {
			t.Errorf("after %s: %d inbox.rows and %d inbox.lag points, want none", what, rows, lags)
		}
	}
	mu.Lock()
	logged := bytes.Count(logs.Bytes(), []byte("reading the inbox's figures failed"))
	mu.Unlock()
	if logged != 2 {
		t.Errorf("%d failures logged, want 2:\n%s", logged, logs.String())
	}
	mode.Store(2)
	if rows, lags, _ := points(); rows != 10 || lags != 2 {
		t.Errorf("after a read that works: %d inbox.rows and %d inbox.lag points, want 10 and 2", rows, lags)
	}
}

// statsFunc adapts a function to StatsReader.
type statsFunc func(context.Context) ([]inbox.HandlerStats, error)

func (f statsFunc) Stats(ctx context.Context) ([]inbox.HandlerStats, error) { return f(ctx) }

// TestObserveAdminRefusesNil: a nil reader or nil *inbox.Admin is an
// error, not a panic at the first collection.
func TestObserveAdminRefusesNil(t *testing.T) {
	i, err := New()
	if err != nil {
		t.Fatal(err)
	}
	var admin *inbox.Admin
	for _, r := range []StatsReader{nil, admin} {
		if _, err := i.ObserveAdmin(r); err == nil {
			t.Errorf("ObserveAdmin(%#v) did not fail", r)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
