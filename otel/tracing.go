package inboxotel

import (
	"context"
	"unicode/utf8"

	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/pginbox/inbox"
)

// middleware runs each handler in a span of its own (see
// [Instrumentation.Middleware]).
func (i *Instrumentation) middleware(ctx context.Context, a inbox.Attempt, next func(context.Context) error) error {
	ctx, parented := i.parent(ctx, a)
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			system,
			semconv.MessagingOperationName(opProcess),
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingDestinationName(a.EventType),
			semconv.MessagingMessageID(a.EventID.String()),
			semconv.MessagingMessageBodySize(len(a.Payload)),
			HandlerKeyKey.String(a.HandlerKey),
			AttemptKey.Int(a.Number),
		),
	}
	if !parented {
		opts = append(opts, trace.WithNewRoot())
	}
	ctx, span := i.tracer.Start(ctx, "process "+a.EventType, opts...)
	defer span.End()

	err := next(ctx)
	outcome := inbox.OutcomeOf(a, err)
	span.SetAttributes(OutcomeKey.String(string(outcome)))
	if err != nil && outcome != inbox.OutcomeRetryLater {
		msg, typ := bound(err.Error()), inbox.ErrorType(err)
		span.AddEvent(semconv.ExceptionEventName, trace.WithAttributes(
			semconv.ExceptionType(typ), semconv.ExceptionMessage(msg)))
		span.SetAttributes(semconv.ErrorTypeKey.String(typ))
		span.SetStatus(codes.Error, msg)
	}
	return err
}

// parent returns the context to start a run's span in, and whether it
// carries the span context stored with the row: the run's span is then
// that span context's child. A run of a row stored without one is the
// root of a trace of its own, not a child of whatever span the Inbox's
// Start context carried.
//
// When the Inbox has this Instrumentation's propagator, ctx carries the
// stored span context already; otherwise (another propagator of the same
// format, or none) it is read from the attempt.
func (i *Instrumentation) parent(ctx context.Context, a inbox.Attempt) (context.Context, bool) {
	if a.TraceContext == "" {
		return ctx, false
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && sc.IsRemote() {
		return ctx, true
	}
	ctx = i.prop.Extract(ctx, a.TraceContext)
	return ctx, trace.SpanContextFromContext(ctx).IsValid()
}

// bound cuts s to at most [inbox.MaxErrorLength] bytes, at a rune
// boundary: a handler's error text can be as large as the handler likes.
func bound(s string) string {
	if len(s) <= inbox.MaxErrorLength {
		return s
	}
	n := inbox.MaxErrorLength
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
