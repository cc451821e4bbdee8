package inboxotel_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
	inboxotel "github.com/pginbox/inbox/otel"
)

// seen records what handlers saw, by event id.
type seen struct {
	mu       sync.Mutex
	spans    map[uuid.UUID]trace.SpanContext
	attempts map[uuid.UUID]inbox.Attempt
}

func newSeen() *seen {
	return &seen{spans: map[uuid.UUID]trace.SpanContext{}, attempts: map[uuid.UUID]inbox.Attempt{}}
}

// handler records the span and attempt of its context, then returns err.
func (s *seen) handler(key string, err error) inbox.Handler {
	return inbox.HandlerFunc(key, func(ctx context.Context, _ []byte) error {
		a, _ := inbox.AttemptFromContext(ctx)
		s.mu.Lock()
		s.spans[a.EventID] = trace.SpanContextFromContext(ctx)
		s.attempts[a.EventID] = a
		s.mu.Unlock()
		return err
	})
}

func (s *seen) get(id uuid.UUID) (trace.SpanContext, inbox.Attempt) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.spans[id], s.attempts[id]
}

// tracer is a TracerProvider exporting to an in-memory exporter.
func tracer(t testing.TB, exp *tracetest.InMemoryExporter) *sdktrace.TracerProvider {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

// runSpans returns the handler spans of event id.
func runSpans(exp *tracetest.InMemoryExporter, id uuid.UUID) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		for _, kv := range s.Attributes {
			if kv.Key == "messaging.message.id" && kv.Value.AsString() == id.String() {
				out = append(out, s)
			}
		}
	}
	return out
}

// waitSpans waits for n handler spans of event id.
func waitSpans(t *testing.T, exp *tracetest.InMemoryExporter, id uuid.UUID, n int) []tracetest.SpanStub {
	t.Helper()
	var spans []tracetest.SpanStub
	testenv.Eventually(t, 10*time.Second, "handler spans", func() (bool, error) {
		spans = runSpans(exp, id)
		return len(spans) >= n, nil
	})
	if len(spans) != n {
		t.Fatalf("%d handler spans for %s, want %d", len(spans), id, n)
	}
	return spans
}

func attr(s tracetest.SpanStub, key attribute.Key) attribute.Value {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// TestTraceFromProducerToHandler: Inbox A, which runs no workers, stores
// events inside producer spans, with Set and with SetTx; Inbox B, another
// instance on the same table with a TracerProvider of its own, runs the
// handlers. Each handler span is a child of its producer span, in its
// trace, and the handler's context carries it; a failing handler's spans
// (one per attempt) are children too, with an Error status.
func TestTraceFromProducerToHandler(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	exp := tracetest.NewInMemoryExporter()
	tpA, tpB := tracer(t, exp), tracer(t, exp)
	instrA, err := inboxotel.New(inboxotel.WithTracerProvider(tpA))
	if err != nil {
		t.Fatal(err)
	}
	instrB, err := inboxotel.New(inboxotel.WithTracerProvider(tpB))
	if err != nil {
		t.Fatal(err)
	}
	s := newSeen()
	reg := inbox.NewRegistry()
	reg.On("order", s.handler("ship", nil))
	reg.Handle("refund", s.handler("pay", errors.New("bank down")), inbox.HandlerMaxAttempts(2))
	a, err := inbox.New(pool, reg, instrA.Options()...)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Start(t, ctx, pool, reg, testenv.Fast(t, instrB.Options()...)...)

	producer := tpA.Tracer("producer")
	type sent struct {
		id   uuid.UUID
		span trace.SpanContext
	}
	setOne := func(eventType string, tx bool) sent {
		id := uuid.New()
		pctx, span := producer.Start(ctx, "send "+eventType, trace.WithSpanKind(trace.SpanKindProducer))
		defer span.End()
		rec := testenv.Record(t, id, eventType, "{}")
		if !tx {
			if err := a.Client().Set(pctx, rec); err != nil {
				t.Fatal(err)
			}
		} else {
			dbtx, err := pool.Begin(pctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := a.Client().SetTx(pctx, dbtx, rec); err != nil {
				t.Fatal(err)
			}
			if err := dbtx.Commit(pctx); err != nil {
				t.Fatal(err)
			}
		}
		return sent{id, span.SpanContext()}
	}
	viaSet, viaSetTx, failing := setOne("order", false), setOne("order", true), setOne("refund", false)

	for name, e := range map[string]sent{"Set": viaSet, "SetTx": viaSetTx} {
		got := waitSpans(t, exp, e.id, 1)[0]
		if got.Name != "process order" || got.SpanKind != trace.SpanKindConsumer {
			t.Errorf("%s: span %q of kind %v, want \"process order\" of kind consumer", name, got.Name, got.SpanKind)
		}
		if got.Parent.SpanID() != e.span.SpanID() || got.SpanContext.TraceID() != e.span.TraceID() || !got.Parent.IsRemote() {
			t.Errorf("%s: span's parent %v in trace %v, want the producer span %v in trace %v, remote",
				name, got.Parent.SpanID(), got.SpanContext.TraceID(), e.span.SpanID(), e.span.TraceID())
		}
		for key, want := range map[attribute.Key]attribute.Value{
			"messaging.system":            attribute.StringValue("inbox"),
			"messaging.operation.name":    attribute.StringValue("process"),
			"messaging.operation.type":    attribute.StringValue("process"),
			"messaging.destination.name":  attribute.StringValue("order"),
			"messaging.message.id":        attribute.StringValue(e.id.String()),
			"messaging.message.body.size": attribute.IntValue(2),
			inboxotel.HandlerKeyKey:       attribute.StringValue("ship"),
			inboxotel.AttemptKey:          attribute.IntValue(1),
			inboxotel.OutcomeKey:          attribute.StringValue("done"),
		} {
			if v := attr(got, key); v != want {
				t.Errorf("%s: %s = %v, want %v", name, key, v.Emit(), want.Emit())
			}
		}
		if got.Status.Code != codes.Unset {
			t.Errorf("%s: status %v, want unset", name, got.Status)
		}
		hsc, attempt := s.get(e.id)
		if hsc.SpanID() != got.SpanContext.SpanID() {
			t.Errorf("%s: the handler's context carries span %v, want the run's span %v", name, hsc.SpanID(), got.SpanContext.SpanID())
		}
		want := "traceparent: 00-" + e.span.TraceID().String() + "-" + e.span.SpanID().String() + "-01"
		if attempt.TraceContext != want {
			t.Errorf("%s: stored trace context %q, want %q", name, attempt.TraceContext, want)
		}
	}

	spans := waitSpans(t, exp, failing.id, 2)
	for i, sp := range spans {
		if sp.Parent.SpanID() != failing.span.SpanID() || sp.SpanContext.TraceID() != failing.span.TraceID() {
			t.Errorf("failing attempt %d: not a child of its producer span", i+1)
		}
		if sp.Status.Code != codes.Error || sp.Status.Description != "bank down" {
			t.Errorf("failing attempt %d: status %+v, want Error \"bank down\"", i+1, sp.Status)
		}
		if len(sp.Events) != 1 || sp.Events[0].Name != "exception" {
			t.Errorf("failing attempt %d: events %+v, want one exception", i+1, sp.Events)
		}
		if v := attr(sp, "error.type"); v.AsString() != "*errors.errorString" {
			t.Errorf("failing attempt %d: error.type %q", i+1, v.Emit())
		}
		wantOutcome := map[int64]string{1: "failed", 2: "dead"}[attr(sp, inboxotel.AttemptKey).AsInt64()]
		if v := attr(sp, inboxotel.OutcomeKey).AsString(); v != wantOutcome {
			t.Errorf("failing attempt %d: outcome %q, want %q", attr(sp, inboxotel.AttemptKey).AsInt64(), v, wantOutcome)
		}
	}
}

// TestNoTraceWithoutSpan: an event stored with no active span stores no
// trace context and is processed as usual; its handler span is the root
// of a trace of its own, not a child of the span that was active when the
// Inbox started.
func TestNoTraceWithoutSpan(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	exp := tracetest.NewInMemoryExporter()
	tp := tracer(t, exp)
	instr, err := inboxotel.New(inboxotel.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	s := newSeen()
	reg := inbox.NewRegistry()
	reg.On("order", s.handler("ship", nil))
	startCtx, startSpan := tp.Tracer("app").Start(ctx, "startup")
	ib := testenv.Start(t, startCtx, pool, reg, testenv.Fast(t, instr.Options()...)...)
	startSpan.End()

	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "order", "{}")); err != nil {
		t.Fatal(err)
	}
	got := waitSpans(t, exp, id, 1)[0]
	if got.Parent.IsValid() {
		t.Errorf("span has parent %v, want a root span", got.Parent.SpanID())
	}
	if got.SpanContext.TraceID() == startSpan.SpanContext().TraceID() {
		t.Error("the handler span is in the trace of the span active when the Inbox started")
	}
	if _, attempt := s.get(id); attempt.TraceContext != "" {
		t.Errorf("stored trace context %q, want none", attempt.TraceContext)
	}
	var stored *string
	if err := pool.QueryRow(ctx, "SELECT trace_context FROM inbox_records WHERE event_id = $1", id).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != nil {
		t.Errorf("trace_context column = %q, want NULL", *stored)
	}
	testenv.Eventually(t, 10*time.Second, "the row to be done", func() (bool, error) {
		rows, err := ib.Lookup(ctx, id)
		return err == nil && len(rows) == 1 && rows[0].Status == inbox.Done, err
	})
}

// TestMiddlewareReadsTheAttempt: with the middleware but not the
// propagator, the run is still the child of the span stored with the row
// by another Inbox's propagator, read from Attempt.TraceContext.
func TestMiddlewareReadsTheAttempt(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	exp := tracetest.NewInMemoryExporter()
	tp := tracer(t, exp)
	instr, err := inboxotel.New(inboxotel.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	reg := inbox.NewRegistry()
	reg.On("order", newSeen().handler("ship", nil))
	producer, err := inbox.New(pool, reg, inbox.WithPropagator(instr.Propagator()))
	if err != nil {
		t.Fatal(err)
	}
	testenv.Start(t, ctx, pool, reg, testenv.Fast(t, inbox.WithMiddleware(instr.Middleware()))...)
	pctx, span := tp.Tracer("producer").Start(ctx, "send")
	id := uuid.New()
	if err := producer.Client().Set(pctx, testenv.Record(t, id, "order", "{}")); err != nil {
		t.Fatal(err)
	}
	span.End()
	got := waitSpans(t, exp, id, 1)[0]
	if got.Parent.SpanID() != span.SpanContext().SpanID() || !strings.HasPrefix(got.Name, "process ") {
		t.Errorf("span %q with parent %v, want a child of %v", got.Name, got.Parent.SpanID(), span.SpanContext().SpanID())
	}
}
