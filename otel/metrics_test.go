package inboxotel_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
	inboxotel "github.com/pginbox/inbox/otel"
)

var (
	keyOK     = inboxotel.HandlerKeyKey.String("ok")
	keyBad    = inboxotel.HandlerKeyKey.String("bad")
	destOrder = attribute.String("messaging.destination.name", "order")
)

func outcome(o inbox.Outcome) attribute.KeyValue { return inboxotel.OutcomeKey.String(string(o)) }
func result(r string) attribute.KeyValue         { return inboxotel.SetResultKey.String(r) }
func op(name string) attribute.KeyValue          { return attribute.String("messaging.operation.name", name) }

// TestMetricsForAKnownWorkload: N events are stored (one with SetTx), M of
// them redelivered, one conflicting and one of an unknown type skipped;
// handler "ok" succeeds, handler "bad" fails K of the events at both of
// its attempts. Every counter and histogram count is exact.
func TestMetricsForAKnownWorkload(t *testing.T) {
	const n, m, k = 12, 4, 3
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	mt := newMeter(t)
	instr, err := inboxotel.New(inboxotel.WithMeterProvider(mt))
	if err != nil {
		t.Fatal(err)
	}
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("ok", func(context.Context, []byte) error { return nil }))
	reg.Handle("order", inbox.HandlerFunc("bad", func(_ context.Context, p []byte) error {
		var i int
		fmt.Sscan(string(p), &i)
		if i < k {
			return errors.New("always fails")
		}
		return nil
	}), inbox.HandlerMaxAttempts(2))
	ib := testenv.Start(t, ctx, pool, reg, testenv.Fast(t, append(instr.Options(), inbox.WithUnknownEventTypes(inbox.SkipUnknown))...)...)

	ids := make([]uuid.UUID, n)
	recs := make([]*inbox.Record, n)
	for i := range n {
		ids[i] = uuid.New()
		recs[i] = testenv.Record(t, ids[i], "order", fmt.Sprint(i))
	}
	c := ib.Client()
	if _, err := c.SetWithResult(ctx, recs[:n-1]...); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetTx(ctx, tx, recs[n-1]); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, recs[n-m:]...); err != nil { // redeliveries
		t.Fatal(err)
	}
	if err := c.Set(ctx, testenv.Record(t, ids[0], "order", "another payload"), testenv.Record(t, uuid.New(), "unknown", "x")); err != nil {
		t.Fatal(err)
	}

	runs := int64(n + (n - k) + 2*k)
	want := map[string]int64{
		"records new":         n,
		"records duplicate":   m,
		"records conflicting": 1,
		"records skipped":     1,
		"rows stored":         2 * n,
		"set calls":           3,
		"set_tx calls":        1,
		"ok done":             n,
		"bad done":            n - k,
		"bad failed":          k,
		"bad dead":            k,
		"lag records":         runs,
		"dead ok":             0,
		"dead bad":            k,
		"claimed":             runs,
		"rescued":             0,
		"written":             runs,
		"lost":                0,
		"claim calls >= 1":    1,
		"write calls >= 1":    1,
	}
	got := map[string]int64{}
	read := func() {
		cl := mt.collect(t)
		got = map[string]int64{
			"records new":         cl.sum("inbox.set.records", result("new")),
			"records duplicate":   cl.sum("inbox.set.records", result("duplicate")),
			"records conflicting": cl.sum("inbox.set.records", result("conflicting")),
			"records skipped":     cl.sum("inbox.set.records", result("skipped")),
			"rows stored":         cl.sum("inbox.set.rows"),
			"set calls":           int64(cl.count("messaging.client.operation.duration", op("set"))),
			"set_tx calls":        int64(cl.count("messaging.client.operation.duration", op("set_tx"))),
			"ok done":             int64(cl.count("messaging.process.duration", keyOK, destOrder, outcome(inbox.OutcomeDone))),
			"bad done":            int64(cl.count("messaging.process.duration", keyBad, destOrder, outcome(inbox.OutcomeDone))),
			"bad failed": int64(cl.count("messaging.process.duration", keyBad, outcome(inbox.OutcomeFailed),
				attribute.String("error.type", "*errors.errorString"))),
			"bad dead":         int64(cl.count("messaging.process.duration", keyBad, outcome(inbox.OutcomeDead))),
			"lag records":      int64(cl.count("inbox.process.lag")),
			"dead ok":          cl.sum("inbox.dead.rows", keyOK),
			"dead bad":         cl.sum("inbox.dead.rows", keyBad, destOrder, attribute.String("error.type", "*errors.errorString")),
			"claimed":          cl.sum("inbox.claim.rows"),
			"rescued":          cl.sum("inbox.claim.rescued"),
			"written":          cl.sum("inbox.write.rows"),
			"lost":             cl.sum("inbox.write.lost"),
			"claim calls >= 1": min(1, int64(cl.count("messaging.client.operation.duration", op("claim")))),
			"write calls >= 1": min(1, int64(cl.count("messaging.client.operation.duration", op("write")))),
		}
	}
	err = testenv.Poll(15*time.Second, func() (bool, error) {
		read()
		return maps.Equal(got, want), nil
	})
	if err != nil {
		for _, name := range slices.Sorted(maps.Keys(want)) {
			if got[name] != want[name] {
				t.Errorf("%s = %d, want %d", name, got[name], want[name])
			}
		}
		t.Fatalf("metrics did not reach the workload's figures: %v", err)
	}
	// Nothing more comes: once Stop has drained the inbox, the figures
	// are still exact.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := ib.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	read()
	want["claim calls >= 1"], want["write calls >= 1"] = got["claim calls >= 1"], got["write calls >= 1"]
	if !maps.Equal(got, want) {
		t.Errorf("after Stop: got %v, want %v", got, want)
	}
}
