package inboxotel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/pginbox/inbox"
)

// Values of inbox.status, named as [inbox.HandlerStats] names its counts.
const (
	statusPending    = "pending"
	statusInProgress = "in_progress"
	statusFailed     = "failed"
	statusDone       = "done"
	statusDead       = "dead"
)

// observables are the instruments ObserveAdmin reports to.
type observables struct {
	rows metric.Int64ObservableUpDownCounter // inbox.rows
	lag  metric.Float64ObservableGauge       // inbox.lag
}

func newObservables(meter metric.Meter) (observables, error) {
	rows, err1 := meter.Int64ObservableUpDownCounter("inbox.rows", metric.WithUnit("{row}"),
		metric.WithDescription("Rows stored, per event type, handler key and status."))
	lag, err2 := meter.Float64ObservableGauge("inbox.lag", metric.WithUnit("s"),
		metric.WithDescription("How long the oldest due row that is not in progress has waited, per event type and handler key; 0 when none is due."))
	return observables{rows: rows, lag: lag}, errors.Join(err1, err2)
}

// StatsReader reads the figures of an inbox table; [*inbox.Admin] is one
// (see [inbox.Admin.Stats]).
type StatsReader interface {
	Stats(ctx context.Context) ([]inbox.HandlerStats, error)
}

// ObserveAdmin reports the figures of the inbox table that admin reads
// (an [*inbox.Admin], from [inbox.NewAdmin] or [inbox.Inbox.Admin])
// through two observable instruments: inbox.rows, the rows per event type,
// handler key and status, and inbox.lag, how long each pair's oldest due
// row has waited. attrs, if any, are added to every observation: give each
// table an attribute of its own when one Instrumentation observes several.
//
// The figures are read when a reader collects, at most once per
// [WithStatsTTL] (default [DefaultStatsTTL]) however many readers collect
// and however often; collections that overlap a read wait for it and share
// it. A read that fails is logged, and until a read succeeds the two
// instruments report nothing rather than old figures: a series that stops
// is noticed ("absent" in Prometheus), a figure that stays still is not.
//
// It returns a function that stops the reporting.
func (i *Instrumentation) ObserveAdmin(admin StatsReader, attrs ...attribute.KeyValue) (unregister func() error, err error) {
	if a, ok := admin.(*inbox.Admin); admin == nil || ok && a == nil {
		return nil, invalid("ObserveAdmin", "admin must not be nil")
	}
	c := &statsCache{read: admin.Stats, ttl: i.cfg.statsTTL, log: i.cfg.logger}
	extra := append([]attribute.KeyValue(nil), attrs...)
	reg, err := i.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		stats, ok := c.get(ctx)
		if !ok {
			return nil
		}
		for _, h := range stats {
			pair := append([]attribute.KeyValue{semconv.MessagingDestinationName(h.EventType), HandlerKeyKey.String(h.HandlerKey)}, extra...)
			for _, s := range []struct {
				status string
				n      int64
			}{{statusPending, h.Pending}, {statusInProgress, h.InProgress}, {statusFailed, h.Failed}, {statusDone, h.Done}, {statusDead, h.Dead}} {
				o.ObserveInt64(i.obs.rows, s.n, metric.WithAttributes(append(pair, StatusKey.String(s.status))...))
			}
			o.ObserveFloat64(i.obs.lag, h.Lag.Seconds(), metric.WithAttributes(pair...))
		}
		return nil
	}, i.obs.rows, i.obs.lag)
	if err != nil {
		return nil, err
	}
	return reg.Unregister, nil
}

// statsCache reads the figures at most once per ttl, one read at a time.
type statsCache struct {
	read func(context.Context) ([]inbox.HandlerStats, error)
	ttl  time.Duration
	log  *slog.Logger

	mu      sync.Mutex
	at      time.Time            // when the last read ended; zero before the first
	stats   []inbox.HandlerStats // the last read's figures
	ok      bool                 // the last read succeeded
	reading chan struct{}        // closed when the running read ends; nil when none runs
}

// get returns the figures of the last read, reading them again when they
// are older than the ttl; ok is false when the last read failed (or ctx
// ended while waiting for another collection's read).
func (c *statsCache) get(ctx context.Context) (stats []inbox.HandlerStats, ok bool) {
	c.mu.Lock()
	if !c.at.IsZero() && time.Since(c.at) < c.ttl {
		defer c.mu.Unlock()
		return c.stats, c.ok
	}
	if wait := c.reading; wait != nil {
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, false
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.stats, c.ok
	}
	done := make(chan struct{})
	c.reading = done
	c.mu.Unlock()

	// The read outlives the collection that started it (others may wait
	// for it), within its own timeout.
	stats, err := c.readOnce(ctx)
	if err != nil {
		c.log.Warn("inboxotel: reading the inbox's figures failed; inbox.rows and inbox.lag report nothing until a read succeeds",
			"error", err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats, c.ok, c.at = stats, err == nil, time.Now()
	c.reading = nil
	close(done)
	return c.stats, c.ok
}

// readOnce reads the figures, within [StatsTimeout] and whether or not
// ctx ends meanwhile: collections waiting for the read share it. A panic
// is an error, so that the waiting collections are not left waiting.
func (c *statsCache) readOnce(ctx context.Context) (stats []inbox.HandlerStats, err error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), StatsTimeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			stats, err = nil, fmt.Errorf("inboxotel: reading the figures panicked: %v", p)
		}
	}()
	return c.read(ctx)
}
