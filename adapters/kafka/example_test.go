package inboxkafka_test

import (
	"context"
	"crypto/tls"
	"log"
	"os"
	"os/signal"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/pginbox/inbox"
	inboxkafka "github.com/pginbox/inbox/adapters/kafka"
)

// A consumer of a real cluster over TLS with SASL/SCRAM: the topic
// "orders" into the inbox, ids from the producer's "event-id" header,
// poison records to "orders-dead".
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	reg := inbox.NewRegistry()
	reg.Handle("order_created", inbox.HandlerFunc("send_email", func(ctx context.Context, payload []byte) error {
		return nil // idempotent work here
	}))
	ib, err := inbox.New(pool, reg)
	if err != nil {
		log.Fatal(err)
	}
	if err := ib.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer ib.Stop(context.WithoutCancel(ctx))

	c, err := inboxkafka.New(ib.Client(), inboxkafka.Options{
		Seeds:           []string{"kafka-1.example.com:9093", "kafka-2.example.com:9093"},
		Group:           "orders-inbox",
		Topics:          []string{"orders"},
		EventTypes:      map[string]string{"orders": "order_created"},
		IDHeader:        "event-id",
		DeadLetterTopic: "orders-dead",
	},
		kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}),
		kgo.SASL(scram.Auth{User: os.Getenv("KAFKA_USER"), Pass: os.Getenv("KAFKA_PASSWORD")}.AsSha512Mechanism()),
	)
	if err != nil {
		log.Fatal(err)
	}
	if err := c.Run(ctx); err != nil { // until Ctrl-C
		log.Print(err)
	}
}
