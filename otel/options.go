package inboxotel

import (
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// DefaultStatsTTL is how long the figures read by [Instrumentation.ObserveAdmin]
// are reused before the next collection reads them again.
const DefaultStatsTTL = 5 * time.Second

// StatsTimeout bounds one read of the figures behind the observable
// instruments ([inbox.Admin.Stats]).
const StatsTimeout = 10 * time.Second

// Option configures an [Instrumentation]; pass options to [New].
type Option func(*config) error

// config is what the options set; New applies the defaults.
type config struct {
	meterProvider  metric.MeterProvider
	tracerProvider trace.TracerProvider
	propagator     propagation.TextMapPropagator
	statsTTL       time.Duration
	logger         *slog.Logger
}

func invalid(option string, rule string) error {
	return fmt.Errorf("inboxotel: %s: %s", option, rule)
}

// WithMeterProvider sets the MeterProvider the metrics are created with.
// The default is the global one, [otel.GetMeterProvider].
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) error {
		if mp == nil {
			return invalid("WithMeterProvider", "provider must not be nil")
		}
		c.meterProvider = mp
		return nil
	}
}

// WithTracerProvider sets the TracerProvider the handler spans are created
// with. The default is the global one, [otel.GetTracerProvider].
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) error {
		if tp == nil {
			return invalid("WithTracerProvider", "provider must not be nil")
		}
		c.tracerProvider = tp
		return nil
	}
}

// WithTextMapPropagator sets how the trace context is written to the text
// stored with each row and read back from it (see
// [Instrumentation.Propagator]). The default is W3C Trace Context alone
// (propagation.TraceContext: traceparent and tracestate), whatever the
// global propagator is; pass
// propagation.NewCompositeTextMapPropagator(propagation.TraceContext{},
// propagation.Baggage{}) to carry baggage too, within
// [inbox.MaxTraceContextLength].
func WithTextMapPropagator(p propagation.TextMapPropagator) Option {
	return func(c *config) error {
		if p == nil {
			return invalid("WithTextMapPropagator", "propagator must not be nil")
		}
		c.propagator = p
		return nil
	}
}

// WithStatsTTL sets how long the figures read for the observable
// instruments are reused, however many readers collect and however often:
// the database is read at most once per ttl. Zero reads them at every
// collection (concurrent collections still share one read). The default is
// [DefaultStatsTTL].
func WithStatsTTL(ttl time.Duration) Option {
	return func(c *config) error {
		if ttl < 0 {
			return invalid("WithStatsTTL", fmt.Sprintf("ttl %v must not be negative", ttl))
		}
		c.statsTTL = ttl
		return nil
	}
}

// WithLogger sets the logger for failures to read the figures behind the
// observable instruments. The default is [slog.Default].
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return invalid("WithLogger", "logger must not be nil")
		}
		c.logger = l
		return nil
	}
}

// newConfig applies opts over the defaults.
func newConfig(opts []Option) (config, error) {
	c := config{statsTTL: DefaultStatsTTL}
	for _, o := range opts {
		if o == nil {
			return c, invalid("New", "option must not be nil")
		}
		if err := o(&c); err != nil {
			return c, err
		}
	}
	if c.meterProvider == nil {
		c.meterProvider = otel.GetMeterProvider()
	}
	if c.tracerProvider == nil {
		c.tracerProvider = otel.GetTracerProvider()
	}
	if c.propagator == nil {
		c.propagator = propagation.TraceContext{}
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	return c, nil
}
