// Command prometheus runs an inbox with OpenTelemetry metrics exported for
// Prometheus, and produces events until it is stopped:
//
//	go run . [-addr 127.0.0.1:9464] [-every 500ms]
//
// It connects to DATABASE_URL (default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable), migrates
// the inbox there, and registers three handlers: reserve_stock and
// send_email for "order_created", ledger for "payment_received".
// send_email fails one attempt in five (three attempts, so a row dies now
// and then) and reserve_stock discards the orders without a SKU (about one
// in ten); every fourth batch redelivers an event already stored, a
// duplicate. The metrics of github.com/pginbox/inbox/otel, rows per status
// and lag included, are served at http://127.0.0.1:9464/metrics;
// grafana-dashboard.json shows them. Ctrl-C stops it gracefully.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/pginbox/inbox"
	inboxotel "github.com/pginbox/inbox/otel"
)

// defaultDatabaseURL is the local server, used when DATABASE_URL is unset.
const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// config is what the flags and the environment set.
type config struct {
	databaseURL string
	addr        string        // where /metrics is served
	every       time.Duration // pause between batches
	batch       int           // new events per batch
	// onListen, if set, is called with the address /metrics is served on
	// (for tests, which listen on port 0).
	onListen func(addr string)
}

func main() {
	cfg := config{databaseURL: cmp.Or(os.Getenv("DATABASE_URL"), defaultDatabaseURL), batch: 3}
	flag.StringVar(&cfg.addr, "addr", "127.0.0.1:9464", "address to serve /metrics on")
	flag.DurationVar(&cfg.every, "every", 500*time.Millisecond, "pause between batches of events")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, cfg, log)
	stop()
	if err != nil {
		log.Error("prometheus example failed", "error", err)
		os.Exit(1)
	}
}

// run runs the example until ctx ends, then stops gracefully.
func run(ctx context.Context, cfg config, log *slog.Logger) (err error) {
	pool, err := pgxpool.New(ctx, cfg.databaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()
	if err := inbox.Migrate(ctx, pool); err != nil {
		return err
	}

	// OpenTelemetry metrics, read by a Prometheus exporter with a registry
	// of its own.
	promRegistry := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(promRegistry),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes))
	if err != nil {
		return fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter),
		sdkmetric.WithResource(resource.NewSchemaless(semconv.ServiceName("inbox-example"))))
	defer func() { err = errors.Join(err, mp.Shutdown(context.WithoutCancel(ctx))) }()

	instr, err := inboxotel.New(inboxotel.WithMeterProvider(mp), inboxotel.WithLogger(log))
	if err != nil {
		return err
	}
	ib, err := inbox.New(pool, handlers(), append(instr.Options(),
		inbox.WithLogger(log), inbox.WithRetryBackoff(50*time.Millisecond, time.Second))...)
	if err != nil {
		return err
	}
	unregister, err := instr.ObserveAdmin(ib.Admin())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, unregister()) }()

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(promRegistry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	if cfg.onListen != nil {
		cfg.onListen(ln.Addr().String())
	}

	if err := ib.Start(ctx); err != nil {
		_ = srv.Close()
		return err
	}
	produce(ctx, ib.Client(), cfg, log)

	// Graceful stop: the inbox drains its running handlers, then the
	// server finishes the scrapes in flight.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err = ib.Stop(sctx)
	if serr := srv.Shutdown(sctx); serr != nil {
		err = errors.Join(err, serr)
	}
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	log.Info("stopped")
	return err
}

// order is the payload of order_created and payment_received.
type order struct {
	ID     int    `json:"id"`
	Amount int    `json:"amount_cents"`
	SKU    string `json:"sku,omitempty"` // empty in about one order in ten: discarded
}

// handlers registers the handlers.
func handlers() *inbox.Registry {
	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.HandlerFunc("reserve_stock", func(ctx context.Context, p []byte) error {
		var o order
		if err := json.Unmarshal(p, &o); err != nil || o.SKU == "" {
			return inbox.Discard(errors.New("order without a SKU"))
		}
		return work(ctx, 2*time.Millisecond, 20*time.Millisecond)
	}))
	reg.Handle("order_created", inbox.HandlerFunc("send_email", func(ctx context.Context, _ []byte) error {
		if rand.IntN(5) == 0 {
			return errors.New("mail server unavailable")
		}
		return work(ctx, 5*time.Millisecond, 50*time.Millisecond)
	}), inbox.HandlerMaxAttempts(3))
	reg.On("payment_received", inbox.HandlerFunc("ledger", func(ctx context.Context, _ []byte) error {
		return work(ctx, time.Millisecond, 10*time.Millisecond)
	}))
	return reg
}

// work pretends to work for a random time between least and most.
func work(ctx context.Context, least, most time.Duration) error {
	t := time.NewTimer(least + rand.N(most-least))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// produce stores a batch of events every cfg.every until ctx ends, as a
// broker consumer would: every third event is a payment, about one order in
// ten lacks its SKU, and every fourth batch redelivers an event stored
// before.
func produce(ctx context.Context, c *inbox.Client, cfg config, log *slog.Logger) {
	tick := time.NewTicker(cfg.every)
	defer tick.Stop()
	var n int
	var last *inbox.Record
	for batch := 0; ; batch++ {
		recs := make([]*inbox.Record, 0, cfg.batch+1)
		for range cfg.batch {
			n++
			o := order{ID: n, Amount: 100 + rand.IntN(10000), SKU: fmt.Sprintf("sku-%d", n%7)}
			eventType := "order_created"
			if n%3 == 0 {
				eventType = "payment_received"
			} else if n%10 == 1 {
				o.SKU = ""
			}
			body, _ := json.Marshal(o)
			rec, err := inbox.NewRecord(uuid.New(), eventType, body)
			if err != nil {
				log.Error("new record", "error", err)
				return
			}
			recs = append(recs, rec)
		}
		if batch%4 == 3 && last != nil {
			recs = append(recs, last) // a redelivery: a duplicate
		}
		last = recs[0]
		if _, err := c.SetWithResult(ctx, recs...); err != nil && ctx.Err() == nil {
			log.Warn("set", "error", err) // a broker would redeliver the batch
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
