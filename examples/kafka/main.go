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
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	inboxkafka "github.com/pginbox/inbox/adapters/kafka"
	"github.com/pginbox/inbox/examples/internal/orders"
)

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
	var f orders.Flags
	f.Register(fs, "kafka")
	seedList := fs.String("seeds", "", "Kafka brokers, comma-separated; empty starts an in-process kfake cluster")
	topic := fs.String("topic", "example_orders", "Kafka topic to produce to and consume")
	if err := fs.Parse(args); err != nil {
		return err
	}

	pool, ib, err := orders.Open(ctx, f, stdout)
	if err != nil {
		return err
	}
	defer pool.Close()

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
		EventTypes: map[string]string{*topic: orders.EventType},
		IDHeader:   "event-id", DeadLetterTopic: *topic + ".dead",
	})
	if err != nil {
		return err
	}
	defer consumer.Close() // Run closes it too; this is for an early return
	if err := ib.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "inbox started in schema %s; consuming topic %s at %s\n", f.Schema, *topic, strings.Join(seeds, ","))
	consumerDone := make(chan error, 1)
	go func() { consumerDone <- consumer.Run(ctx) }()

	orders.Produce(ctx, f.Every, stdout, func(ctx context.Context, id uuid.UUID, payload []byte) error { // until Ctrl-C
		return producer.ProduceSync(ctx, &kgo.Record{Topic: *topic, Value: payload,
			Headers: []kgo.RecordHeader{{Key: "event-id", Value: []byte(id.String())}}}).FirstErr()
	})
	return orders.Stop(ctx, ib, consumerDone, func() string {
		s := consumer.Stats()
		return fmt.Sprintf("stored %d, duplicates %d, committed %d", s.Stored, s.Duplicates, s.Committed)
	}, stdout)
}
