package inboxotel

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/pginbox/inbox"
)

// MessagingSystem is the value of the messaging.system attribute on the
// messaging.* metrics and on the spans.
const MessagingSystem = "inbox"

// Attribute keys of the inbox's own, beside OpenTelemetry's messaging
// attributes.
const (
	// HandlerKeyKey is the handler key a row belongs to
	// (inbox.handler_key).
	HandlerKeyKey = attribute.Key("inbox.handler_key")
	// OutcomeKey is how a handler run ended (inbox.outcome): one of the
	// [inbox.Outcome] values.
	OutcomeKey = attribute.Key("inbox.outcome")
	// SetResultKey is what a Set did with records (inbox.set.result): new,
	// duplicate, conflicting, skipped, or failed when the Set failed.
	SetResultKey = attribute.Key("inbox.set.result")
	// StatusKey is a row status (inbox.status): pending, in_progress,
	// failed, done or dead, as [inbox.HandlerStats] counts them.
	StatusKey = attribute.Key("inbox.status")
	// AttemptKey is a run's attempt number, from 1 (inbox.attempt), on
	// spans.
	AttemptKey = attribute.Key("inbox.attempt")
)

// Values of messaging.operation.name.
const (
	opSet       = "set"
	opSetTx     = "set_tx"
	opClaim     = "claim"
	opWrite     = "write"
	opProcess   = "process"
	opRetention = "retention"
)

// Values of inbox.set.result.
const (
	resultNew         = "new"
	resultDuplicate   = "duplicate"
	resultConflicting = "conflicting"
	resultSkipped     = "skipped"
	resultFailed      = "failed"
)

// durationBuckets are the bucket boundaries, in seconds, that
// OpenTelemetry's messaging conventions advise for durations.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// lagBuckets are the bucket boundaries, in seconds, for a row's wait
// before its run and for retention runs: from milliseconds to a day.
var lagBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400}

// metrics are the instruments the hooks record to.
type metrics struct {
	opDuration        metric.Float64Histogram // messaging.client.operation.duration
	processDuration   metric.Float64Histogram // messaging.process.duration
	processLag        metric.Float64Histogram // inbox.process.lag
	setRecords        metric.Int64Counter     // inbox.set.records
	setRows           metric.Int64Counter     // inbox.set.rows
	claimRows         metric.Int64Counter     // inbox.claim.rows
	claimRescued      metric.Int64Counter     // inbox.claim.rescued
	writeRows         metric.Int64Counter     // inbox.write.rows
	writeLost         metric.Int64Counter     // inbox.write.lost
	deadRows          metric.Int64Counter     // inbox.dead.rows
	retentionDeleted  metric.Int64Counter     // inbox.retention.deleted
	retentionErased   metric.Int64Counter     // inbox.retention.erased
	retentionDuration metric.Float64Histogram // inbox.retention.duration

	// Attribute sets without an error, made once.
	ops     map[string]metric.MeasurementOption // operation name: duration attributes
	results map[string]metric.MeasurementOption // set result: records attributes
	none    metric.MeasurementOption

	// Attribute sets of runs and dead rows, made on first use: their
	// number is bounded by the registered (event type, handler key) pairs.
	runs  sync.Map // runKey: *runAttrs
	deads sync.Map // deadKey: metric.MeasurementOption
}

// newMetrics creates the instruments on meter.
func newMetrics(meter metric.Meter) (*metrics, error) {
	m := &metrics{none: metric.WithAttributeSet(*attribute.EmptySet())}
	var errs []error
	hist := func(name, unit, desc string, buckets []float64) metric.Float64Histogram {
		h, err := meter.Float64Histogram(name, metric.WithUnit(unit), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(buckets...))
		errs = append(errs, err)
		return h
	}
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	m.opDuration = hist("messaging.client.operation.duration", "s",
		"Duration of the inbox's statements: Set and SetTx (send), claims (receive), result writes (settle).", durationBuckets)
	m.processDuration = hist("messaging.process.duration", "s",
		"Duration of handler runs, middleware included.", durationBuckets)
	m.processLag = hist("inbox.process.lag", "s",
		"Time from a row being stored to a run of its handler starting (retries include their earlier attempts and backoff).", lagBuckets)
	m.setRecords = counter("inbox.set.records", "{record}",
		"Records given to Set and SetTx, by what was done with them.")
	m.setRows = counter("inbox.set.rows", "{row}",
		"Rows inserted by Set and SetTx: one per new (record, handler key).")
	m.claimRows = counter("inbox.claim.rows", "{row}", "Rows claimed to run.")
	m.claimRescued = counter("inbox.claim.rescued", "{row}",
		"Rows claimed whose previous lease had expired (their worker died or lost the database).")
	m.writeRows = counter("inbox.write.rows", "{row}", "Results written.")
	m.writeLost = counter("inbox.write.lost", "{row}",
		"Results not written because the worker no longer held the row's lease; those rows run again.")
	m.deadRows = counter("inbox.dead.rows", "{row}",
		"Rows that died: attempts used up, discarded, or their last lease expired.")
	m.retentionDeleted = counter("inbox.retention.deleted", "{row}", "Finished rows deleted by retention.")
	m.retentionErased = counter("inbox.retention.erased", "{payload}", "Payloads erased by retention.")
	m.retentionDuration = hist("inbox.retention.duration", "s", "Duration of retention runs.", lagBuckets)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("inboxotel: create instruments: %w", err)
	}

	m.ops = map[string]metric.MeasurementOption{}
	for op, typ := range map[string]attribute.KeyValue{
		opSet: semconv.MessagingOperationTypeSend, opSetTx: semconv.MessagingOperationTypeSend,
		opClaim: semconv.MessagingOperationTypeReceive, opWrite: semconv.MessagingOperationTypeSettle,
	} {
		m.ops[op] = metric.WithAttributes(system, semconv.MessagingOperationName(op), typ)
	}
	m.results = map[string]metric.MeasurementOption{}
	for _, r := range []string{resultNew, resultDuplicate, resultConflicting, resultSkipped} {
		m.results[r] = metric.WithAttributes(SetResultKey.String(r))
	}
	return m, nil
}

// system is the messaging.system attribute.
var system = semconv.MessagingSystemKey.String(MessagingSystem)

// opAttrs returns the attributes of operation op's duration, with
// error.type when err is not nil.
func (m *metrics) opAttrs(op string, err error) metric.MeasurementOption {
	if err == nil {
		return m.ops[op]
	}
	typ := semconv.MessagingOperationTypeSend
	switch op {
	case opClaim:
		typ = semconv.MessagingOperationTypeReceive
	case opWrite:
		typ = semconv.MessagingOperationTypeSettle
	}
	return metric.WithAttributes(system, semconv.MessagingOperationName(op), typ, semconv.ErrorTypeKey.String(inbox.ErrorType(err)))
}

func (m *metrics) onSet(ctx context.Context, e inbox.SetEvent) {
	op := opSet
	if e.Tx {
		op = opSetTx
	}
	m.opDuration.Record(ctx, e.Duration.Seconds(), m.opAttrs(op, e.Err))
	if e.Err != nil {
		m.setRecords.Add(ctx, int64(e.Records),
			metric.WithAttributes(SetResultKey.String(resultFailed), semconv.ErrorTypeKey.String(inbox.ErrorType(e.Err))))
		return
	}
	r := e.Result
	for _, c := range []struct {
		result string
		n      int
	}{{resultNew, r.New}, {resultDuplicate, r.Duplicates}, {resultConflicting, r.Conflicting}, {resultSkipped, r.Skipped}} {
		if c.n > 0 {
			m.setRecords.Add(ctx, int64(c.n), m.results[c.result])
		}
	}
	if r.Rows > 0 {
		m.setRows.Add(ctx, int64(r.Rows), m.none)
	}
}

func (m *metrics) onClaim(e inbox.ClaimEvent) {
	ctx := context.Background()
	m.opDuration.Record(ctx, e.Duration.Seconds(), m.opAttrs(opClaim, e.Err))
	if e.Rows > 0 {
		m.claimRows.Add(ctx, int64(e.Rows), m.none)
	}
	if e.Rescued > 0 {
		m.claimRescued.Add(ctx, int64(e.Rescued), m.none)
	}
}

func (m *metrics) onWrite(e inbox.WriteEvent) {
	ctx := context.Background()
	m.opDuration.Record(ctx, e.Duration.Seconds(), m.opAttrs(opWrite, e.Err))
	if e.Rows > 0 {
		m.writeRows.Add(ctx, int64(e.Rows), m.none)
	}
	if e.Lost > 0 {
		m.writeLost.Add(ctx, int64(e.Lost), m.none)
	}
}

// runKey identifies the attribute sets of a run.
type runKey struct {
	eventType, handlerKey string
	outcome               inbox.Outcome
	errorType             string
}

// runAttrs are the attributes of a run's duration and lag.
type runAttrs struct {
	duration, lag []metric.RecordOption
}

func (m *metrics) onRun(ctx context.Context, e inbox.RunEvent) {
	k := runKey{eventType: e.Attempt.EventType, handlerKey: e.Attempt.HandlerKey, outcome: e.Outcome}
	if e.Err != nil && e.Outcome != inbox.OutcomeDone && e.Outcome != inbox.OutcomeRetryLater {
		k.errorType = inbox.ErrorType(e.Err)
	}
	a := m.runAttrs(k)
	m.processDuration.Record(ctx, e.Duration.Seconds(), a.duration...)
	m.processLag.Record(ctx, e.Lag.Seconds(), a.lag...)
}

// runAttrs returns the attribute sets of runs of k, made once.
func (m *metrics) runAttrs(k runKey) *runAttrs {
	if a, ok := m.runs.Load(k); ok {
		return a.(*runAttrs)
	}
	dest, key := semconv.MessagingDestinationName(k.eventType), HandlerKeyKey.String(k.handlerKey)
	kv := []attribute.KeyValue{system, semconv.MessagingOperationName(opProcess), semconv.MessagingOperationTypeProcess,
		dest, key, OutcomeKey.String(string(k.outcome))}
	if k.errorType != "" {
		kv = append(kv, semconv.ErrorTypeKey.String(k.errorType))
	}
	a := &runAttrs{
		duration: []metric.RecordOption{metric.WithAttributes(kv...)},
		lag:      []metric.RecordOption{metric.WithAttributes(dest, key)},
	}
	v, _ := m.runs.LoadOrStore(k, a)
	return v.(*runAttrs)
}

// deadKey identifies the attribute set of dead rows.
type deadKey struct{ eventType, handlerKey, errorType string }

func (m *metrics) onDead(rec inbox.DeadRecord) {
	k := deadKey{rec.EventType, rec.HandlerKey, inbox.ErrorType(rec.Err)}
	a, ok := m.deads.Load(k)
	if !ok {
		a, _ = m.deads.LoadOrStore(k, metric.WithAttributes(semconv.MessagingDestinationName(k.eventType),
			HandlerKeyKey.String(k.handlerKey), semconv.ErrorTypeKey.String(k.errorType)))
	}
	m.deadRows.Add(context.Background(), 1, a.(metric.MeasurementOption))
}

func (m *metrics) onRetention(e inbox.RetentionEvent) {
	ctx := context.Background()
	attrs := m.none
	if e.Err != nil {
		attrs = metric.WithAttributes(semconv.ErrorTypeKey.String(inbox.ErrorType(e.Err)))
	}
	m.retentionDuration.Record(ctx, e.Duration.Seconds(), attrs)
	if e.RowsDeleted > 0 {
		m.retentionDeleted.Add(ctx, e.RowsDeleted, m.none)
	}
	if e.PayloadsErased > 0 {
		m.retentionErased.Add(ctx, e.PayloadsErased, m.none)
	}
}
