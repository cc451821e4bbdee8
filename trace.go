package inbox

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"unicode/utf8"
)

// MaxTraceContextLength is the longest trace context stored with a row,
// in bytes; a longer one (an oversized tracestate) is not stored.
const MaxTraceContextLength = 1024

// ValidateTraceContext reports whether tc can be a record's own trace
// context ([Record.WithTraceContext]): at most [MaxTraceContextLength]
// bytes of valid UTF-8 without NUL. Its error wraps [ErrInvalidRecord]. A
// consumer that reads trace contexts from messages can check one here and
// drop it, rather than have Set refuse the record.
func ValidateTraceContext(tc string) error {
	if len(tc) > MaxTraceContextLength || !utf8.ValidString(tc) || strings.ContainsRune(tc, 0) {
		return fmt.Errorf("%w: trace context of %d bytes is longer than %d (MaxTraceContextLength) or not text",
			ErrInvalidRecord, len(tc), MaxTraceContextLength)
	}
	return nil
}

// Propagator carries a trace across the inbox: the trace context of the
// code that calls Set is stored with each row it inserts, and the handler
// that runs the row, later and perhaps in another process, continues that
// trace. The OpenTelemetry module (github.com/pginbox/inbox/otel) has one
// for W3C Trace Context; pass it with [WithPropagator].
type Propagator interface {
	// Inject returns the trace context of ctx as text to store with the
	// rows, "" for none (ctx carries no trace). It is called once per
	// statement of a Set (one, unless the Set holds more than 16 MiB) and
	// must be quick.
	Inject(ctx context.Context) string
	// Extract returns ctx carrying the stored trace context, for the
	// handler's run; middleware and the handler see its values, with the
	// deadline and cancellation of ctx.
	Extract(ctx context.Context, stored string) context.Context
}

// WithPropagator stores the trace context of each Set's context with the
// rows it inserts, and gives each handler run a context carrying it (see
// [Propagator]); [Attempt].TraceContext holds the stored text.
func WithPropagator(p Propagator) Option {
	return func(c *config) error {
		if p == nil {
			return invalid("WithPropagator", "propagator", "must not be nil")
		}
		c.propagator = p
		return nil
	}
}

// traced returns ctx carrying the job's stored trace context, when there
// is one and a propagator. A propagator that panics is logged, and the run
// goes on without the trace.
func (w *worker) traced(ctx context.Context, j *job) (out context.Context) {
	if w.cfg.propagator == nil || j.trace == "" {
		return ctx
	}
	defer func() {
		if p := recover(); p != nil {
			w.log.Error("inbox: propagator panicked in Extract; the run goes on without the stored trace", "panic", p)
			out = ctx
		}
	}()
	if c := w.cfg.propagator.Extract(ctx, j.trace); c != nil && c != ctx {
		return valuesOf{Context: ctx, values: c}
	}
	return ctx
}

// valuesOf is ctx with the values of the context a Propagator returned
// (and ctx's own where that one has none), but ctx's deadline and
// cancellation: a propagator that built its context from scratch cannot
// cut the handler off from its timeout or its lease.
type valuesOf struct {
	context.Context
	values context.Context
}

func (v valuesOf) Value(key any) any {
	if x := v.values.Value(key); x != nil {
		return x
	}
	return v.Context.Value(key)
}

// traceOf returns the trace context to store for a Set with ctx: nil
// without a propagator, or when it gives none, or one too long or not
// text.
func (c *Client) traceOf(ctx context.Context) *string {
	if c.propagator == nil {
		return nil
	}
	s := inject(c.propagator, ctx, c.logger)
	if s == "" {
		return nil
	}
	if ValidateTraceContext(s) != nil {
		c.logger.Debug("inbox: trace context not stored: longer than MaxTraceContextLength or not text", "bytes", len(s))
		return nil
	}
	return &s
}

// inject calls p.Inject, recovering a panic (logged; no trace stored).
func inject(p Propagator, ctx context.Context, log *slog.Logger) (s string) {
	defer func() {
		if r := recover(); r != nil {
			log.Error("inbox: propagator panicked in Inject; the rows are stored without a trace context", "panic", r)
			s = ""
		}
	}()
	return p.Inject(ctx)
}
