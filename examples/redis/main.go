// Command redis runs an inbox fed from a Redis stream, and publishes a few
// order_created events to that stream every second so you can watch them
// flow:
//
//	cd examples/redis && go run .
//
// It needs PostgreSQL (DATABASE_URL, default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable) and Redis
// (-redis, default 127.0.0.1:6379). It migrates the inbox into a schema of
// its own (-schema, default example_redis), registers two handlers for
// order_created (send_email prints, save_order inserts into the table
// orders in the same transaction that completes its row), starts the
// Inbox and an inboxredis consumer on the stream (-stream), and publishes
// events with a UUID in the field event_id; every third second it
// publishes the previous event again, a duplicate the inbox ignores.
// Ctrl-C stops the producer, then the consumer, then the Inbox.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
	inboxredis "github.com/pginbox/inbox/adapters/redis"
)

// Order is the payload of an order_created event.
type Order struct {
	ID  uuid.UUID `json:"id"`
	SKU string    `json:"sku"`
	Qty int       `json:"qty"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "redis example:", err)
		os.Exit(1)
	}
}

// run runs the example until ctx ends, then stops gracefully.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("redis", flag.ContinueOnError)
	dbURL := fs.String("database", cmp.Or(os.Getenv("DATABASE_URL"),
		"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), "PostgreSQL URL (env DATABASE_URL)")
	schema := fs.String("schema", "example_redis", "PostgreSQL schema for the inbox tables, created if missing")
	addr := fs.String("redis", "127.0.0.1:6379", "Redis address")
	stream := fs.String("stream", "example_orders", "Redis stream to publish to and consume")
	every := fs.Duration("every", time.Second, "pause between published events")
	if err := fs.Parse(args); err != nil {
		return err
	}

	// The pool's search_path puts every inbox table into the schema.
	cfg, err := pgxpool.ParseConfig(*dbURL)
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = *schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{*schema}.Sanitize()+`;
		CREATE TABLE IF NOT EXISTS `+pgx.Identifier{*schema, "orders"}.Sanitize()+
		` (id uuid PRIMARY KEY, sku text NOT NULL, qty int NOT NULL, saved_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	if err := inbox.Migrate(ctx, pool); err != nil {
		return err
	}

	reg := inbox.NewRegistry()
	reg.On("order_created",
		inbox.HandlerFunc("send_email", func(ctx context.Context, payload []byte) error {
			fmt.Fprintf(stdout, "send_email: order %s\n", payload)
			return nil
		}),
		inbox.TxHandlerFunc("save_order", func(ctx context.Context, tx pgx.Tx, payload []byte) error {
			var o Order
			if err := json.Unmarshal(payload, &o); err != nil {
				return inbox.Discard(err)
			}
			_, err := tx.Exec(ctx, `INSERT INTO orders (id, sku, qty) VALUES ($1, $2, $3)`, o.ID, o.SKU, o.Qty)
			if err == nil {
				fmt.Fprintf(stdout, "save_order: order %s saved\n", o.ID)
			}
			return err
		}))
	ib, err := inbox.New(pool, reg, inbox.WithoutMigrations(), inbox.WithIterationRate(time.Second))
	if err != nil {
		return err
	}

	rdb := redis.NewClient(&redis.Options{Addr: *addr})
	defer rdb.Close()
	consumer, err := inboxredis.New(rdb, ib.Client(), inboxredis.Options{
		Group: "example", Consumer: "example-0",
		Streams: map[string]string{*stream: "order_created"},
		IDField: "event_id",
	})
	if err != nil {
		return err
	}
	if err := ib.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "inbox started in schema %s; consuming stream %s at %s\n", *schema, *stream, *addr)
	consumerDone := make(chan error, 1)
	go func() { consumerDone <- consumer.Run(ctx) }()

	produce(ctx, rdb, *stream, *every, stdout) // until ctx ends (Ctrl-C)
	fmt.Fprintln(stdout, "stopping: producer stopped")
	cerr := <-consumerDone
	s := consumer.Stats()
	fmt.Fprintf(stdout, "stopping: consumer stopped (read %d, stored %d, duplicates %d, acked %d)\n",
		s.Read, s.Stored, s.Duplicates, s.Acked)
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err = ib.Stop(stopCtx)
	fmt.Fprintln(stdout, "stopping: inbox stopped")
	if cerr != nil {
		return cerr
	}
	return err
}

// produce adds an order_created entry to stream every tick until ctx ends;
// every third one repeats the previous event id and payload.
func produce(ctx context.Context, rdb *redis.Client, stream string, every time.Duration, stdout io.Writer) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	var last map[string]any
	for n := 1; ; n++ {
		msg, what := last, "again (a duplicate)"
		if n%3 != 0 || last == nil {
			o := Order{ID: uuid.New(), SKU: fmt.Sprintf("sku-%d", n%5), Qty: n%4 + 1}
			payload, _ := json.Marshal(o)
			msg, what = map[string]any{"event_id": o.ID.String(), "payload": payload}, ""
			last = msg
		}
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: msg}).Err(); err != nil {
			if ctx.Err() != nil {
				return
			}
			fmt.Fprintf(stdout, "publish: %v\n", err)
		} else {
			fmt.Fprintf(stdout, "published event %s %s\n", msg["event_id"], what)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
