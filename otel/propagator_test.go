package inboxotel

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/pginbox/inbox"
)

func spanContext(t testing.TB, state string) trace.SpanContext {
	t.Helper()
	ts, err := trace.ParseTraceState(state)
	if err != nil {
		t.Fatal(err)
	}
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, TraceState: ts})
}

// TestPropagatorRoundTrip: the stored text is the documented header
// lines, and reads back to the same span context, remote.
func TestPropagatorRoundTrip(t *testing.T) {
	p := textPropagator{propagation.TraceContext{}}
	for _, c := range []struct{ state, want string }{
		{"", "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
			"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\ntracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"},
	} {
		sc := spanContext(t, c.state)
		got := p.Inject(trace.ContextWithSpanContext(context.Background(), sc))
		if got != c.want {
			t.Errorf("Inject = %q, want %q", got, c.want)
		}
		back := trace.SpanContextFromContext(p.Extract(context.Background(), got))
		if !back.Equal(sc.WithRemote(true)) {
			t.Errorf("Extract(%q) = %+v, want %+v", got, back, sc.WithRemote(true))
		}
	}
	if len("traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") != 68 {
		t.Error("the documented size of a traceparent line is wrong")
	}
}

// TestPropagatorStoresNothingWithoutSpan: no span, no text.
func TestPropagatorStoresNothingWithoutSpan(t *testing.T) {
	p := textPropagator{propagation.TraceContext{}}
	if got := p.Inject(context.Background()); got != "" {
		t.Errorf("Inject without a span = %q, want \"\"", got)
	}
}

// TestPropagatorBoundsTheText: a tracestate that would make the text
// longer than inbox.MaxTraceContextLength is left out, the traceparent
// kept.
func TestPropagatorBoundsTheText(t *testing.T) {
	p := textPropagator{propagation.TraceContext{}}
	long := strings.Repeat("v", 240)
	sc := spanContext(t, "a="+long+",b="+long+",c="+long+",d="+long+",e="+long)
	got := p.Inject(trace.ContextWithSpanContext(context.Background(), sc))
	if len(got) > inbox.MaxTraceContextLength || strings.Contains(got, "tracestate") || !strings.HasPrefix(got, "traceparent: 00-") {
		t.Errorf("Inject = %q (%d bytes), want the traceparent line alone", got, len(got))
	}
}

// TestPropagatorCarriesBaggage: with a composite propagator the fields
// come in the propagator's order, and baggage comes back.
func TestPropagatorCarriesBaggage(t *testing.T) {
	p := textPropagator{propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})}
	m, _ := baggage.NewMember("tenant", "acme")
	b, _ := baggage.New(m)
	ctx := baggage.ContextWithBaggage(trace.ContextWithSpanContext(context.Background(), spanContext(t, "")), b)
	got := p.Inject(ctx)
	want := "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\nbaggage: tenant=acme"
	if got != want {
		t.Errorf("Inject = %q, want %q", got, want)
	}
	if v := baggage.FromContext(p.Extract(context.Background(), got)).Member("tenant").Value(); v != "acme" {
		t.Errorf("baggage tenant = %q after Extract, want acme", v)
	}
}

// TestPropagatorIgnoresGarbage: text that is not a trace context gives
// the context back without a span.
func TestPropagatorIgnoresGarbage(t *testing.T) {
	p := textPropagator{propagation.TraceContext{}}
	for _, s := range []string{"", "garbage", ":", "\n\n:x", "traceparent: zz",
		"traceparent 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"traceparent: 00-00000000000000000000000000000000-b7ad6b7169203331-01"} {
		if sc := trace.SpanContextFromContext(p.Extract(context.Background(), s)); sc.IsValid() {
			t.Errorf("Extract(%q) = %v, want no span context", s, sc)
		}
	}
}

// FuzzPropagator: whatever is stored, Extract does not panic, and what
// Inject then writes is bounded and reads back to the same span context.
func FuzzPropagator(f *testing.F) {
	f.Add("traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\ntracestate: rojo=00f067aa0ba902b7")
	f.Add("traceparent:00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\r\n")
	f.Add("baggage: a=b\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	f.Add("")
	p := textPropagator{propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})}
	f.Fuzz(func(t *testing.T, stored string) {
		ctx := p.Extract(context.Background(), stored)
		out := p.Inject(ctx)
		if len(out) > inbox.MaxTraceContextLength {
			t.Fatalf("Inject wrote %d bytes", len(out))
		}
		sc := trace.SpanContextFromContext(ctx)
		again := trace.SpanContextFromContext(p.Extract(context.Background(), out))
		if sc.IsValid() && !again.Equal(sc) && strings.Contains(out, "tracestate") {
			t.Fatalf("round trip changed %+v into %+v (stored %q, written %q)", sc, again, stored, out)
		}
		if sc.IsValid() && (again.TraceID() != sc.TraceID() || again.SpanID() != sc.SpanID()) {
			t.Fatalf("round trip lost the span: %+v into %+v (written %q)", sc, again, out)
		}
	})
}
