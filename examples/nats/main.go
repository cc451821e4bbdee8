// Command nats runs an inbox fed from a NATS JetStream stream, and publishes
// an order_created event to that stream every second so you can watch
// events flow:
//
//	cd examples/nats && go run .
//
// It needs PostgreSQL (DATABASE_URL, default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable) and NATS
// with JetStream (-nats, default nats://127.0.0.1:4222). It migrates the
// inbox into a schema of its own (-schema, default example_nats), registers
// two handlers for order_created (send_email prints, save_order inserts
// into the table orders in the same transaction that completes its row),
// creates the stream (-stream) on the subject (-subject) where missing,
// starts the Inbox and an inboxnats durable consumer, and publishes events
// with a UUID in the header Event-Id; every third second it publishes the
// previous event again, a duplicate the inbox ignores. (The header is not
// Nats-Msg-Id, with which JetStream would drop the duplicate itself.)
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
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	inboxnats "github.com/pginbox/inbox/adapters/nats"
	"github.com/pginbox/inbox/examples/internal/orders"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "nats example:", err)
		os.Exit(1)
	}
}

// run runs the example until ctx ends, then stops gracefully.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("nats", flag.ContinueOnError)
	var f orders.Flags
	f.Register(fs, "nats")
	addr := fs.String("nats", nats.DefaultURL, "NATS server URL")
	stream := fs.String("stream", "EXAMPLE_ORDERS", "JetStream stream, created if missing")
	subject := fs.String("subject", "example.orders.created", "subject of the stream to publish to")
	if err := fs.Parse(args); err != nil {
		return err
	}

	pool, ib, err := orders.Open(ctx, f, stdout)
	if err != nil {
		return err
	}
	defer pool.Close()

	nc, err := nats.Connect(*addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: *stream, Subjects: []string{*subject}}); err != nil {
		return err
	}
	consumer, err := inboxnats.New(ctx, js, ib.Client(), inboxnats.Options{
		Stream: *stream, Durable: "example",
		Types:    map[string]string{*subject: orders.EventType},
		IDHeader: "Event-Id",
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
		_, err := js.PublishMsg(ctx, &nats.Msg{Subject: *subject, Header: nats.Header{"Event-Id": {id.String()}}, Data: payload})
		return err
	})
	return orders.Stop(ctx, ib, consumerDone, func() string {
		s := consumer.Stats()
		return fmt.Sprintf("fetched %d, acked %d, terminated %d", s.Fetched, s.Acked, s.Terminated)
	}, stdout)
}
