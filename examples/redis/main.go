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
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	inboxredis "github.com/pginbox/inbox/adapters/redis"
	"github.com/pginbox/inbox/examples/internal/orders"
)

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
	var f orders.Flags
	f.Register(fs, "redis")
	addr := fs.String("redis", "127.0.0.1:6379", "Redis address")
	stream := fs.String("stream", "example_orders", "Redis stream to publish to and consume")
	if err := fs.Parse(args); err != nil {
		return err
	}

	pool, ib, err := orders.Open(ctx, f, stdout)
	if err != nil {
		return err
	}
	defer pool.Close()

	rdb := redis.NewClient(&redis.Options{Addr: *addr})
	defer rdb.Close()
	consumer, err := inboxredis.New(rdb, ib.Client(), inboxredis.Options{
		Group: "example", Consumer: "example-0",
		Streams: map[string]string{*stream: orders.EventType},
		IDField: "event_id",
	})
	if err != nil {
		return err
	}
	if err := ib.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "inbox started in schema %s; consuming stream %s at %s\n", f.Schema, *stream, *addr)
	consumerDone := make(chan error, 1)
	go func() { consumerDone <- consumer.Run(ctx) }()

	orders.Produce(ctx, f.Every, stdout, func(ctx context.Context, id uuid.UUID, payload []byte) error { // until Ctrl-C
		return rdb.XAdd(ctx, &redis.XAddArgs{Stream: *stream, Values: map[string]any{"event_id": id.String(), "payload": payload}}).Err()
	})
	return orders.Stop(ctx, ib, consumerDone, func() string {
		s := consumer.Stats()
		return fmt.Sprintf("read %d, stored %d, duplicates %d, acked %d", s.Read, s.Stored, s.Duplicates, s.Acked)
	}, stdout)
}
