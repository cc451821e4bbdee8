package inboxotel_test

import (
	"context"
	"os"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/pginbox/inbox/internal/testenv"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, "inboxotel", testenv.InboxCode, "github.com/pginbox/inbox/otel", testenv.PgxPool))
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
