// Command rabbitmq runs an inbox fed from a RabbitMQ queue, and publishes
// an order_created message to that queue every second so you can watch
// events flow:
//
//	cd examples/rabbitmq && go run .
//
// It needs PostgreSQL (DATABASE_URL, default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable) and RabbitMQ
// (-amqp, default amqp://guest:guest@127.0.0.1:5672/). It migrates the
// inbox into a schema of its own (-schema, default example_rabbitmq),
// registers two handlers for order_created (send_email prints, save_order
// inserts into the table orders in the same transaction that completes its
// row), declares the queue (-queue) with a dead-letter queue <queue>.dead,
// starts the Inbox and an inboxrabbitmq consumer, and publishes messages
// with a UUID as message-id and the event type as type property; every
// third second it publishes the previous message again, a duplicate the
// inbox ignores.
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
	amqp "github.com/rabbitmq/amqp091-go"

	inboxrabbitmq "github.com/pginbox/inbox/adapters/rabbitmq"
	"github.com/pginbox/inbox/examples/internal/orders"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "rabbitmq example:", err)
		os.Exit(1)
	}
}

// run runs the example until ctx ends, then stops gracefully.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("rabbitmq", flag.ContinueOnError)
	var f orders.Flags
	f.Register(fs, "rabbitmq")
	addr := fs.String("amqp", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL")
	queue := fs.String("queue", "example_orders", "RabbitMQ queue, declared if missing")
	if err := fs.Parse(args); err != nil {
		return err
	}

	pool, ib, err := orders.Open(ctx, f, stdout)
	if err != nil {
		return err
	}
	defer pool.Close()

	// The producer's connection; the consumer dials its own.
	conn, err := amqp.Dial(*addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if _, err := ch.QueueDeclare(*queue+".dead", true, false, false, false, nil); err != nil {
		return err
	}
	if _, err := ch.QueueDeclare(*queue, true, false, false, false, amqp.Table{
		"x-dead-letter-exchange": "", "x-dead-letter-routing-key": *queue + ".dead",
	}); err != nil {
		return err
	}
	consumer, err := inboxrabbitmq.New(inboxrabbitmq.DialURL(*addr), ib.Client(), inboxrabbitmq.Options{
		Queue: *queue, TypeFrom: inboxrabbitmq.TypeFromProperty,
	})
	if err != nil {
		return err
	}
	if err := ib.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "inbox started in schema %s; consuming queue %s at %s\n", f.Schema, *queue, *addr)
	consumerDone := make(chan error, 1)
	go func() { consumerDone <- consumer.Run(ctx) }()

	orders.Produce(ctx, f.Every, stdout, func(ctx context.Context, id uuid.UUID, payload []byte) error { // until Ctrl-C
		return ch.PublishWithContext(ctx, "", *queue, false, false, amqp.Publishing{MessageId: id.String(), Type: orders.EventType,
			ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: payload})
	})
	return orders.Stop(ctx, ib, consumerDone, func() string {
		s := consumer.Stats()
		return fmt.Sprintf("batches %d, acked %d, poison %d", s.Batches, s.Acked, s.Poison)
	}, stdout)
}
