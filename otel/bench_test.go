package inboxotel_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/pginbox/inbox"
	inboxotel "github.com/pginbox/inbox/otel"
)

// BenchmarkRunHook measures the metrics' cost per handler run: one OnRun
// call recording the duration and lag histograms with the metrics SDK.
func BenchmarkRunHook(b *testing.B) {
	instr, err := inboxotel.New(inboxotel.WithMeterProvider(newMeter(b)))
	if err != nil {
		b.Fatal(err)
	}
	onRun := instr.Hooks().OnRun
	ctx := context.Background()
	run := inbox.RunEvent{
		Attempt:  inbox.Attempt{EventID: uuid.New(), EventType: "order", HandlerKey: "ship", Number: 1, MaxAttempts: 5},
		Outcome:  inbox.OutcomeDone,
		Duration: 3 * time.Millisecond,
		Lag:      40 * time.Millisecond,
	}
	failed := run
	failed.Outcome, failed.Err = inbox.OutcomeFailed, errors.New("downstream unavailable")
	b.Run("done", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			onRun(ctx, run)
		}
	})
	b.Run("failed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			onRun(ctx, failed)
		}
	})
	b.Run("done-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				onRun(ctx, run)
			}
		})
	})
}

// BenchmarkMiddleware measures the span's cost per handler run, with the
// trace SDK sampling every span and a no-op exporter, for a row stored
// with a trace context.
func BenchmarkMiddleware(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(tracetest.NewNoopExporter()))
	defer tp.Shutdown(context.Background())
	instr, err := inboxotel.New(inboxotel.WithTracerProvider(tp))
	if err != nil {
		b.Fatal(err)
	}
	pctx, span := tp.Tracer("producer").Start(context.Background(), "send")
	stored := instr.Propagator().Inject(pctx)
	span.End()
	mw := instr.Middleware()
	a := inbox.Attempt{EventID: uuid.New(), EventType: "order", HandlerKey: "ship", Number: 1, MaxAttempts: 5,
		Payload: []byte("{}"), TraceContext: stored}
	next := func(context.Context) error { return nil }
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = mw(ctx, a, next)
	}
}
