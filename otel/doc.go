// Package inboxotel gives an inbox (github.com/pginbox/inbox) OpenTelemetry
// metrics and traces: metrics from the inbox's hooks, a span around every
// handler run from a middleware, and a propagator that stores the trace
// context of each Set with its rows, so that one trace follows an event
// from the code that stored it to every run of its handlers, across
// processes. It is a module of its own: the inbox itself depends on no
// OpenTelemetry package.
//
// # Usage
//
//	instr, err := inboxotel.New(
//		inboxotel.WithMeterProvider(mp),  // default: otel.GetMeterProvider()
//		inboxotel.WithTracerProvider(tp), // default: otel.GetTracerProvider()
//	)
//	if err != nil { ... }
//	ib, err := inbox.New(pool, registry, append(instr.Options(), inbox.WithLogger(log))...)
//	if err != nil { ... }
//	// Rows per status and lag, per handler, read from the table:
//	unregister, err := instr.ObserveAdmin(ib.Admin())
//	if err != nil { ... }
//	defer unregister()
//
// [Instrumentation.Options] is [inbox.WithHooks], [inbox.WithMiddleware]
// and [inbox.WithPropagator] with [Instrumentation.Hooks],
// [Instrumentation.Middleware] and [Instrumentation.Propagator]; each may
// be used alone.
//
// # Metrics
//
// Names and attributes follow OpenTelemetry's messaging conventions where
// they fit (the inbox is the messaging system: Set sends, a claim receives,
// a handler run processes, a result write settles), with attributes of the
// inbox's own otherwise. Durations are in seconds.
//
//	messaging.client.operation.duration  histogram              s          messaging.system, messaging.operation.name (set, set_tx, claim, write), messaging.operation.type (send, receive, settle), error.type
//	messaging.process.duration           histogram              s          messaging.system, messaging.operation.name and .type (process), messaging.destination.name, inbox.handler_key, inbox.outcome, error.type
//	inbox.process.lag                    histogram              s          messaging.destination.name, inbox.handler_key
//	inbox.set.records                    counter                {record}   inbox.set.result (new, duplicate, conflicting, skipped, failed), error.type
//	inbox.set.rows                       counter                {row}
//	inbox.claim.rows                     counter                {row}
//	inbox.claim.rescued                  counter                {row}
//	inbox.write.rows                     counter                {row}
//	inbox.write.lost                     counter                {row}
//	inbox.dead.rows                      counter                {row}      messaging.destination.name, inbox.handler_key, error.type
//	inbox.retention.deleted              counter                {row}
//	inbox.retention.erased               counter                {payload}
//	inbox.retention.duration             histogram              s          error.type
//	inbox.rows                           async up-down counter  {row}      messaging.destination.name, inbox.handler_key, inbox.status (pending, in_progress, failed, done, dead)
//	inbox.lag                            async gauge            s          messaging.destination.name, inbox.handler_key
//
// messaging.destination.name is the event type. error.type is set on
// failures only: one of the inbox's sentinel errors by name (such as
// inbox.ErrHandlerTimeout), else the Go type of the innermost error, as
// the inbox groups failures. inbox.process.lag is the time from a row
// being stored to a run starting; a retry's includes its earlier attempts
// and backoff. The last two come from [Instrumentation.ObserveAdmin].
// inbox.rows is an up-down counter rather than a gauge because its values
// add up (the rows of every status are the table's rows); Prometheus shows
// it as a gauge. inbox.retention.* come from the Inbox that ran retention.
//
// SetTx is counted when it returns: its rows are stored only if the
// caller's transaction then commits.
//
// # Traces
//
// See [Instrumentation.Middleware] for the spans and
// [Instrumentation.Propagator] for the trace context stored with each row.
package inboxotel
