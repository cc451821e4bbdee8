package inboxotel_test

import (
	"context"
	"log"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/pginbox/inbox"
	inboxotel "github.com/pginbox/inbox/otel"
)

// An Inbox with metrics, spans and trace propagation, and the rows and lag
// of its table as observable instruments.
func ExampleInstrumentation_Options() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	mp := sdkmetric.NewMeterProvider( /* sdkmetric.WithReader(an exporter) */ )
	tp := sdktrace.NewTracerProvider( /* sdktrace.WithBatcher(an exporter) */ )

	instr, err := inboxotel.New(inboxotel.WithMeterProvider(mp), inboxotel.WithTracerProvider(tp))
	if err != nil {
		log.Fatal(err)
	}
	registry := inbox.NewRegistry()
	registry.On("order_created", inbox.HandlerFunc("reserve_stock", func(ctx context.Context, payload []byte) error {
		return nil // ctx carries the run's span, a child of the producer's
	}))
	ib, err := inbox.New(pool, registry, append(instr.Options(), inbox.WithMaxRetryAttempt(10))...)
	if err != nil {
		log.Fatal(err)
	}
	unregister, err := instr.ObserveAdmin(ib.Admin())
	if err != nil {
		log.Fatal(err)
	}
	defer unregister()
	if err := ib.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer ib.Stop(context.Background())

	// The producer: the span active around Set is stored with the rows.
	ctx, span := tp.Tracer("consumer").Start(ctx, "receive order_created")
	defer span.End()
	rec, err := inbox.NewRecord(uuid.New(), "order_created", []byte(`{"order":42}`))
	if err != nil {
		log.Fatal(err)
	}
	if err := ib.Client().Set(ctx, rec); err != nil {
		log.Fatal(err)
	}
}
