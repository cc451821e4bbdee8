package inboxotel

import (
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/pginbox/inbox"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "github.com/pginbox/inbox/otel"

// Instrumentation holds the instruments, the tracer and the propagator
// that observe one or more Inboxes. It is safe for concurrent use; one
// Instrumentation may serve several Inboxes of a process.
type Instrumentation struct {
	cfg    config
	meter  metric.Meter
	tracer trace.Tracer
	prop   textPropagator
	m      *metrics
	obs    observables
}

// New creates the instruments on the MeterProvider and the tracer on the
// TracerProvider (the global ones unless [WithMeterProvider] and
// [WithTracerProvider] say otherwise). It fails for a nil option or
// provider, or an instrument that cannot be created.
func New(opts ...Option) (*Instrumentation, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	i := &Instrumentation{
		cfg:    cfg,
		meter:  cfg.meterProvider.Meter(ScopeName),
		tracer: cfg.tracerProvider.Tracer(ScopeName),
		prop:   textPropagator{p: cfg.propagator},
	}
	if i.m, err = newMetrics(i.meter); err != nil {
		return nil, err
	}
	if i.obs, err = newObservables(i.meter); err != nil {
		return nil, err
	}
	return i, nil
}

// Options returns the options that give an Inbox metrics, spans and trace
// propagation: [inbox.WithHooks] with [Instrumentation.Hooks],
// [inbox.WithMiddleware] with [Instrumentation.Middleware] and
// [inbox.WithPropagator] with [Instrumentation.Propagator]. Put them first,
// so that the span is the outermost middleware:
//
//	ib, err := inbox.New(pool, registry, append(instr.Options(), inbox.WithLogger(log))...)
//
// An Inbox that only stores rows (a producer that runs no workers) needs
// the propagator alone, but the other two cost it nothing.
func (i *Instrumentation) Options() []inbox.Option {
	return []inbox.Option{
		inbox.WithHooks(i.Hooks()),
		inbox.WithMiddleware(i.Middleware()),
		inbox.WithPropagator(i.Propagator()),
	}
}

// Hooks returns the hooks that record the metrics: Set and SetTx results
// and durations, claims, handler runs (duration by outcome, lag), result
// writes, dead rows and retention runs.
func (i *Instrumentation) Hooks() inbox.Hooks {
	return inbox.Hooks{
		OnSet:       i.m.onSet,
		OnClaim:     i.m.onClaim,
		OnRun:       i.m.onRun,
		OnWrite:     i.m.onWrite,
		OnDead:      i.m.onDead,
		OnRetention: i.m.onRetention,
	}
}

// Middleware returns the middleware that runs each handler in a span:
// named "process <event type>", of kind Consumer, with the messaging
// attributes (messaging.system "inbox", messaging.operation.name and
// .type "process", messaging.destination.name the event type,
// messaging.message.id the event id, messaging.message.body.size) and
// inbox.handler_key, inbox.attempt and inbox.outcome. A failed run (also
// a discarded one, not one that asked to retry later) sets the span's
// status to Error, with error.type and an exception event holding the
// error's text, bounded to [inbox.MaxErrorLength] bytes. The handler's
// context carries the span, so the handler's own spans are its children.
//
// A run of a row stored with a trace context (see
// [Instrumentation.Propagator]) is a child of the span that was active
// around Set or SetTx, in the same trace, in whatever process the handler
// runs. A child rather than a new trace with a link: a run processes
// exactly one event and has no context of its own to be part of (the
// workers' polling is not traced), which is the case where OpenTelemetry's
// messaging conventions let the producer's context be the parent, and one
// trace from the producer to every handler run (retries included, as
// siblings) is what trace viewers show best. A row stored without one
// starts a trace of its own.
func (i *Instrumentation) Middleware() inbox.Middleware {
	return i.middleware
}

// Propagator returns the [inbox.Propagator] that stores the trace context
// of each Set's context with its rows and restores it for their handler
// runs, written with the TextMapPropagator ([WithTextMapPropagator];
// default W3C Trace Context).
//
// The stored text is the propagator's fields as header lines, "name:
// value" separated by "\n", at most [inbox.MaxTraceContextLength] bytes. With
// the default, and no tracestate, it is one line of 68 bytes:
//
//	traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
//
// A tracestate is a second line, left out when it would not fit. With the
// default propagator, a context without a valid span stores nothing.
func (i *Instrumentation) Propagator() inbox.Propagator {
	return i.prop
}
