package inboxotel

import (
	"context"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/propagation"

	"github.com/pginbox/inbox"
)

// textPropagator is the [inbox.Propagator] of an Instrumentation: it
// stores the trace context as header lines.
//
// The stored text is the fields the TextMapPropagator writes, one
// "name: value" line each, separated by "\n": traceparent first, then
// tracestate, then any other field (baggage, say) by name. With the default
// W3C Trace Context propagator and a span without tracestate it is one
// line of 68 bytes:
//
//	traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
//
// and with tracestate a second line ("tracestate: rojo=00f067aa0ba902b7").
// The text is at most [inbox.MaxTraceContextLength] bytes: a field that
// would not fit is left out (an oversized tracestate, say, so that the
// traceparent is still stored). Fields whose name or value could not be
// read back (a name with ':' or a line break, a value with a line break)
// are left out too.
type textPropagator struct {
	p propagation.TextMapPropagator
}

// Inject returns the trace context of ctx as header lines, "" when ctx
// carries none.
func (t textPropagator) Inject(ctx context.Context) string {
	carrier := propagation.MapCarrier{}
	t.p.Inject(ctx, carrier)
	if len(carrier) == 0 {
		return ""
	}
	var b strings.Builder
	add := func(name string) {
		value, ok := carrier[name]
		if !ok {
			return
		}
		delete(carrier, name)
		if name == "" || strings.ContainsAny(name, ":\r\n") || strings.ContainsAny(value, "\r\n") {
			return
		}
		n := len(name) + len(": ") + len(value)
		if b.Len() > 0 {
			n++
		}
		if b.Len()+n > inbox.MaxTraceContextLength {
			return
		}
		if b.Len() > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(name)
		b.WriteString(": ")
		b.WriteString(value)
	}
	add("traceparent")
	add("tracestate")
	rest := carrier.Keys()
	slices.Sort(rest)
	for _, name := range rest {
		add(name)
	}
	return b.String()
}

// Extract returns ctx carrying the trace context stored as text (see
// Inject); lines it cannot read are ignored, and ctx is returned as it is
// when no trace context could be read.
func (t textPropagator) Extract(ctx context.Context, stored string) context.Context {
	carrier := parse(stored)
	if len(carrier) == 0 {
		return ctx
	}
	return t.p.Extract(ctx, carrier)
}

// parse reads header lines into a carrier.
func parse(stored string) propagation.MapCarrier {
	carrier := propagation.MapCarrier{}
	for line := range strings.Lines(stored) {
		name, value, ok := strings.Cut(line, ":")
		if name = strings.TrimSpace(name); !ok || name == "" {
			continue
		}
		carrier[name] = strings.TrimSpace(value)
	}
	return carrier
}
