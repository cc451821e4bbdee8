// Command kafka runs an inbox fed from a Kafka topic through a consumer
// group, and produces an order_created record to that topic every second
// so you can watch events flow:
//
//	cd examples/kafka && go run .              # an in-process Kafka (kfake)
//	cd examples/kafka && go run . -seeds host:9092
//
// It needs PostgreSQL (DATABASE_URL, default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable). Without
// -seeds it starts franz-go's in-process fake cluster, kfake, with the
// topic (-topic) and its dead-letter topic <topic>.dead. It migrates the
// inbox into a schema of its own (-schema, default example_kafka),
// registers two handlers for order_created (send_email prints, save_order
// inserts into the table orders in the same transaction that completes its
// row), starts the Inbox and an inboxkafka consumer, and produces records
// with a UUID in the header event-id; every third second it produces the
// previous record again, a duplicate the inbox ignores.
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
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pginbox/inbox"
	inboxkafka "github.com/pginbox/inbox/adapters/kafka"
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
		fmt.Fprintln(os.Stderr, "kafka example:", err)
		os.Exit(1)
	}
}

// run runs the example until ctx ends, then stops gracefully.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("kafka", flag.ContinueOnError)
	dbURL := fs.String("database", cmp.Or(os.Getenv("DATABASE_URL"),
		"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), "PostgreSQL URL (env DATABASE_URL)")
	schema := fs.String("schema", "example_kafka", "PostgreSQL schema for the inbox tables, created if missing")
	seedList := fs.String("seeds", "", "Kafka brokers, comma-separated; empty starts an in-process kfake cluster")
	topic := fs.String("topic", "example_orders", "Kafka topic to produce to and consume")
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

	var seeds []string
	if *seedList != "" {
		seeds = strings.Split(*seedList, ",")
	} else {
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, *topic, *topic+".dead"))
		if err != nil {
			return err
		}
		defer cluster.Close()
		seeds = cluster.ListenAddrs()
	}
	producer, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.AllowAutoTopicCreation())
	if err != nil {
		return err
	}
	defer producer.Close()
	consumer, err := inboxkafka.New(ib.Client(), inboxkafka.Options{
		Seeds: seeds, Group: "example", Topics: []string{*topic},
		EventTypes: map[string]string{*topic: "order_created"},
		IDHeader:   "event-id", DeadLetterTopic: *topic + ".dead",
	})
	if err != nil {
		return err
	}
	defer consumer.Close() // Run closes it too; this is for an early return
	if err := ib.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "inbox started in schema %s; consuming topic %s at %s\n", *schema, *topic, strings.Join(seeds, ","))
	consumerDone := make(chan error, 1)
	go func() { consumerDone <- consumer.Run(ctx) }()

	produce(ctx, producer, *topic, *every, stdout) // until ctx ends (Ctrl-C)
	fmt.Fprintln(stdout, "stopping: producer stopped")
	cerr := <-consumerDone
	s := consumer.Stats()
	fmt.Fprintf(stdout, "stopping: consumer stopped (stored %d, duplicates %d, committed %d)\n",
		s.Stored, s.Duplicates, s.Committed)
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err = ib.Stop(stopCtx)
	fmt.Fprintln(stdout, "stopping: inbox stopped")
	if cerr != nil {
		return cerr
	}
	return err
}

// produce writes an order_created record to topic every tick until ctx
// ends; every third one repeats the previous event id and payload.
func produce(ctx context.Context, cl *kgo.Client, topic string, every time.Duration, stdout io.Writer) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	var last *kgo.Record
	for n := 1; ; n++ {
		rec, what := last, "again (a duplicate)"
		if n%3 != 0 || last == nil {
			o := Order{ID: uuid.New(), SKU: fmt.Sprintf("sku-%d", n%5), Qty: n%4 + 1}
			payload, _ := json.Marshal(o)
			rec, what = &kgo.Record{Topic: topic, Value: payload,
				Headers: []kgo.RecordHeader{{Key: "event-id", Value: []byte(o.ID.String())}}}, ""
			last = rec
		}
		// A fresh record each time: the client owns a record once produced.
		r := &kgo.Record{Topic: rec.Topic, Value: rec.Value, Headers: rec.Headers}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			if ctx.Err() != nil {
				return
			}
			fmt.Fprintf(stdout, "publish: %v\n", err)
		} else {
			fmt.Fprintf(stdout, "published event %s %s\n", rec.Headers[0].Value, what)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
