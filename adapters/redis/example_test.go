package inboxredis_test

import (
	"context"
	"log"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
	inboxredis "github.com/pginbox/inbox/adapters/redis"
)

// A service that stores the entries of two streams in its inbox: "orders"
// holds order_created events with their id in the field "event_id", and
// "payments" says each entry's event type in the field "type".
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	pool, err := pgxpool.New(ctx, "postgres://app@localhost/app")
	if err != nil {
		log.Fatal(err)
	}
	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.HandlerFunc("send_email", func(ctx context.Context, payload []byte) error {
		return nil // send it
	}))
	reg.On("payment_received", inbox.HandlerFunc("book", func(ctx context.Context, payload []byte) error {
		return nil // book it
	}))
	ib, err := inbox.New(pool, reg)
	if err != nil {
		log.Fatal(err)
	}
	if err := ib.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer ib.Stop(context.WithoutCancel(ctx))

	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	defer rdb.Close()
	consumer, err := inboxredis.New(rdb, ib.Client(), inboxredis.Options{
		Group:     "billing",
		Consumer:  "billing-0", // stable across restarts, e.g. the pod's name
		Streams:   map[string]string{"orders": "order_created", "payments": ""},
		IDField:   "event_id",
		TypeField: "type",
	})
	if err != nil {
		log.Fatal(err)
	}
	// Until SIGTERM: read, Set, then XACK; failures back off and retry.
	if err := consumer.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
