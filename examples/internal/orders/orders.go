// Package orders is the PostgreSQL side that the broker adapters' example
// services share: a schema of their own with an orders table, the inbox
// migrated into it, two handlers for order_created, the events they
// publish, and the graceful stop. Each example adds its broker.
package orders

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// EventType is the event type the examples publish and handle.
const EventType = "order_created"

// Order is the payload of an order_created event.
type Order struct {
	ID  uuid.UUID `json:"id"`
	SKU string    `json:"sku"`
	Qty int       `json:"qty"`
}

// Next returns the nth order a producer publishes and its payload.
func Next(n int) (Order, []byte) {
	o := Order{ID: uuid.New(), SKU: fmt.Sprintf("sku-%d", n%5), Qty: n%4 + 1}
	payload, _ := json.Marshal(o) // a struct of a uuid, a string and an int
	return o, payload
}

// Flags are the flags every example has: -database (default
// $DATABASE_URL, else the local server), -schema (default example_NAME)
// and -every (the pause between published events).
type Flags struct {
	Database, Schema string
	Every            time.Duration
}

// Register adds the flags to fs, for the example called name.
func (f *Flags) Register(fs *flag.FlagSet, name string) {
	fs.StringVar(&f.Database, "database", cmp.Or(os.Getenv("DATABASE_URL"),
		"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), "PostgreSQL URL (env DATABASE_URL)")
	fs.StringVar(&f.Schema, "schema", "example_"+name, "PostgreSQL schema for the inbox tables, created if missing")
	fs.DurationVar(&f.Every, "every", time.Second, "pause between published events")
}

// Open connects to the database with the schema as search_path, creates
// the schema and the orders table if missing, migrates the inbox into it,
// and returns an Inbox (not started) whose handlers print to stdout:
// send_email prints, save_order inserts into orders in the transaction
// that completes its row. The caller closes the pool.
func Open(ctx context.Context, f Flags, stdout io.Writer) (*pgxpool.Pool, *inbox.Inbox, error) {
	cfg, err := pgxpool.ParseConfig(f.Database)
	if err != nil {
		return nil, nil, err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = f.Schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	ib, err := setUp(ctx, pool, stdout)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return pool, ib, nil
}

func setUp(ctx context.Context, pool *pgxpool.Pool, stdout io.Writer) (*inbox.Inbox, error) {
	schema := pool.Config().ConnConfig.RuntimeParams["search_path"]
	if _, err := pool.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{schema}.Sanitize()+`;
		CREATE TABLE IF NOT EXISTS `+pgx.Identifier{schema, "orders"}.Sanitize()+
		` (id uuid PRIMARY KEY, sku text NOT NULL, qty int NOT NULL, saved_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, err
	}
	if err := inbox.Migrate(ctx, pool); err != nil {
		return nil, err
	}
	reg := inbox.NewRegistry()
	reg.On(EventType,
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
	return inbox.New(pool, reg, inbox.WithoutMigrations(), inbox.WithIterationRate(time.Second))
}

// Stop is the end of an example once ctx ended and its producer stopped:
// it waits for the consumer (consumerDone), prints its figures (stats()),
// then stops the Inbox, within 30 seconds. It returns the consumer's
// error, else the Inbox's.
func Stop(ctx context.Context, ib *inbox.Inbox, consumerDone <-chan error, stats func() string, stdout io.Writer) error {
	fmt.Fprintln(stdout, "stopping: producer stopped")
	cerr := <-consumerDone
	fmt.Fprintf(stdout, "stopping: consumer stopped (%s)\n", stats())
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := ib.Stop(stopCtx)
	fmt.Fprintln(stdout, "stopping: inbox stopped")
	if cerr != nil {
		return cerr
	}
	return err
}

// Produce publishes an order_created event with publish every tick until
// ctx ends; every third one publishes the previous event again (same id,
// same payload): a redelivery the inbox ignores.
func Produce(ctx context.Context, every time.Duration, stdout io.Writer, publish func(ctx context.Context, id uuid.UUID, payload []byte) error) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	var id uuid.UUID
	var payload []byte
	for n := 1; ; n++ {
		what := "again (a duplicate)"
		if n%3 != 0 || payload == nil {
			var o Order
			o, payload = Next(n)
			id, what = o.ID, ""
		}
		if err := publish(ctx, id, payload); err != nil {
			if ctx.Err() != nil {
				return
			}
			fmt.Fprintf(stdout, "publish: %v\n", err)
		} else {
			fmt.Fprintf(stdout, "published event %s %s\n", id, what)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
