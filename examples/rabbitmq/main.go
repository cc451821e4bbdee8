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
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
	inboxrabbitmq "github.com/pginbox/inbox/adapters/rabbitmq"
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
		fmt.Fprintln(os.Stderr, "rabbitmq example:", err)
		os.Exit(1)
	}
}

// run runs the example until ctx ends, then stops gracefully.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("rabbitmq", flag.ContinueOnError)
	dbURL := fs.String("database", cmp.Or(os.Getenv("DATABASE_URL"),
		"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), "PostgreSQL URL (env DATABASE_URL)")
	schema := fs.String("schema", "example_rabbitmq", "PostgreSQL schema for the inbox tables, created if missing")
	addr := fs.String("amqp", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL")
	queue := fs.String("queue", "example_orders", "RabbitMQ queue, declared if missing")
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
	fmt.Fprintf(stdout, "inbox started in schema %s; consuming queue %s at %s\n", *schema, *queue, *addr)
	consumerDone := make(chan error, 1)
	go func() { consumerDone <- consumer.Run(ctx) }()

	produce(ctx, ch, *queue, *every, stdout) // until ctx ends (Ctrl-C)
	fmt.Fprintln(stdout, "stopping: producer stopped")
	cerr := <-consumerDone
	s := consumer.Stats()
	fmt.Fprintf(stdout, "stopping: consumer stopped (batches %d, acked %d, poison %d)\n",
		s.Batches, s.Acked, s.Poison)
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err = ib.Stop(stopCtx)
	fmt.Fprintln(stdout, "stopping: inbox stopped")
	if cerr != nil {
		return cerr
	}
	return err
}

// produce publishes an order_created message to queue every tick until
// ctx ends; every third one repeats the previous message id and body.
func produce(ctx context.Context, ch *amqp.Channel, queue string, every time.Duration, stdout io.Writer) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	var last amqp.Publishing
	for n := 1; ; n++ {
		msg, what := last, "again (a duplicate)"
		if n%3 != 0 || last.MessageId == "" {
			o := Order{ID: uuid.New(), SKU: fmt.Sprintf("sku-%d", n%5), Qty: n%4 + 1}
			payload, _ := json.Marshal(o)
			msg, what = amqp.Publishing{MessageId: o.ID.String(), Type: "order_created",
				ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: payload}, ""
			last = msg
		}
		if err := ch.PublishWithContext(ctx, "", queue, false, false, msg); err != nil {
			if ctx.Err() != nil {
				return
			}
			fmt.Fprintf(stdout, "publish: %v\n", err)
		} else {
			fmt.Fprintf(stdout, "published event %s %s\n", msg.MessageId, what)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
