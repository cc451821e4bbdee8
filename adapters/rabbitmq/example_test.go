package inboxrabbitmq_test

import (
	"context"
	"log"
	"os"
	"os/signal"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	inboxrabbitmq "github.com/pginbox/inbox/adapters/rabbitmq"
)

// A service that consumes the queue "orders" into its inbox until it is
// interrupted. The queue needs a dead-letter exchange for poison messages.
// (Compiled, not run: it needs a RabbitMQ and a database of its own.)
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.HandlerFunc("send_email", func(ctx context.Context, payload []byte) error {
		return nil // send it
	}))
	ib, err := inbox.New(pool, reg)
	if err != nil {
		log.Fatal(err)
	}
	if err := ib.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = ib.Stop(context.WithoutCancel(ctx)) }()

	consumer, err := inboxrabbitmq.New(inboxrabbitmq.DialURL(os.Getenv("AMQP_URL")), ib.Client(), inboxrabbitmq.Options{
		Queue: "orders",
		// The routing key "orders.created" is the event type
		// "order_created"; a message with any other routing key is
		// dead-lettered.
		Types: map[string]string{"orders.created": "order_created"},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := consumer.Run(ctx); err != nil { // until interrupted
		log.Fatal(err)
	}
}
