// Command demo shows the inbox end to end on a real PostgreSQL server.
//
//	go run ./examples/demo
//
// A simulated broker consumer delivers 500 "order_created" events in
// batches, with redeliveries of events it has already delivered, and stores
// each batch with Client.SetWithResult before it would acknowledge it; the
// result says how many records were duplicates. Three handlers process every
// order: reserve_stock always succeeds, send_email fails the first attempt or
// two of 40 % of the orders (it has 5 attempts of its own, set at
// registration), and export_erp discards every 50th order (inbox.Discard:
// dead at once, no retries). A middleware counts the failed attempts. A live
// table shows the rows move; at the end the demo prints what each handler
// did and stops the inbox gracefully.
//
// PostgreSQL is found or started the way the tests do it (see
// internal/pgserver): INBOX_TEST_DATABASE_URL, else Docker, else the local
// PostgreSQL server binaries. The demo works in a database of its own and
// drops it when it exits, also on Ctrl-C.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/pgserver"
)

const (
	eventType   = "order_created"
	orders      = 500                    // distinct orders delivered
	batchNew    = 20                     // new orders per batch
	batchDup    = 5                      // redeliveries per batch: 20 % of records
	batchEvery  = 150 * time.Millisecond // pace of the simulated broker
	reportEvery = 300 * time.Millisecond
	giveUpAfter = time.Minute
)

// keys are the handler keys, in registration order.
var keys = []string{"reserve_stock", "send_email", "export_erp"}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	interrupted := ctx.Err() != nil
	stop()
	switch {
	case err != nil && interrupted:
		fmt.Fprintln(os.Stderr, "demo: interrupted")
		os.Exit(130)
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// run provides a database, runs the demo in it and cleans up.
func run(ctx context.Context) error {
	setupCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	srv, err := pgserver.Find(setupCtx)
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Println("PostgreSQL:", srv.Source)
	url, drop, err := srv.CreateDatabase(setupCtx)
	if err != nil {
		return err
	}
	defer func() {
		dropCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := drop(dropCtx); err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
		}
	}()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	return demo(ctx, pool)
}

func demo(ctx context.Context, pool *pgxpool.Pool) error {
	var failedAttempts, deadCallbacks atomic.Int64
	reg := inbox.NewRegistry()
	reg.On(eventType, reserveStock(), exportERP())
	reg.Handle(eventType, sendEmail(), inbox.HandlerMaxAttempts(5), inbox.HandlerTimeout(2*time.Second))
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{} // keep log lines short
			}
			return a
		},
	}))
	ib, err := inbox.New(pool, reg,
		inbox.WithIterationRate(100*time.Millisecond),
		inbox.WithRetryBackoff(50*time.Millisecond, 500*time.Millisecond),
		inbox.WithMaxRetryAttempt(3),
		inbox.WithLease(2*time.Second),
		inbox.WithLogger(logger),
		inbox.OnDeadCallback(func(context.Context, inbox.DeadRecord) { deadCallbacks.Add(1) }),
		inbox.WithMiddleware(countFailures(&failedAttempts)),
	)
	if err != nil {
		return err
	}
	if err := ib.Start(ctx); err != nil {
		return err
	}
	stopInbox := func() error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		return ib.Stop(ctx)
	}
	defer stopInbox() // on early return; a no-op once stopped

	fmt.Printf("Delivering %d orders in batches of %d new + %d redelivered; 3 handlers, so 3 rows per order.\n",
		orders, batchNew, batchDup)
	fmt.Println("Warnings from the inbox's logger (rows that went dead) go to stderr.")
	fmt.Println()
	fmt.Println("received:   records passed to Client.SetWithResult, redeliveries included")
	fmt.Println("duplicates: records SetWithResult reported as duplicates (stored before, ignored)")
	fmt.Println("queued .. dead: rows per status, from Inbox.Counts")
	fmt.Println()
	fmt.Println("elapsed  received  duplicates │ queued  running  retrying  done  dead │ failed attempts  dead callbacks")

	var b broker
	consumed := make(chan error, 1)
	go func() { consumed <- b.consume(ctx, ib.Client()) }()

	line := func(elapsed time.Duration, sent, duplicates int, c map[inbox.Status]int) {
		fmt.Printf("%6.1fs  %8d  %10d │ %6d  %7d  %8d  %4d  %4d │ %15d  %14d\n",
			elapsed.Seconds(), sent, duplicates, c[inbox.Null], c[inbox.Progress], c[inbox.Failed],
			c[inbox.Done], c[inbox.Dead], failedAttempts.Load(), deadCallbacks.Load())
	}
	begin := time.Now()
	tick := time.NewTicker(reportEvery)
	defer tick.Stop()
	delivering := true
	for {
		select {
		case <-ctx.Done():
			if delivering {
				<-consumed
			}
			return ctx.Err()
		case err := <-consumed:
			if err != nil {
				return fmt.Errorf("consumer: %w", err)
			}
			delivering = false
			continue
		case <-tick.C:
		}
		sent, duplicates, counts, err := b.snapshot(ctx, ib)
		if err != nil {
			return err
		}
		if !delivering && counts[inbox.Null]+counts[inbox.Progress]+counts[inbox.Failed] == 0 {
			break // every row is done or dead
		}
		line(time.Since(begin), sent, duplicates, counts)
		if time.Since(begin) > giveUpAfter {
			return fmt.Errorf("rows still due after %v: %v", giveUpAfter, counts)
		}
	}

	// Stop waits for running handlers and for the dead callbacks, so the
	// line printed after it is final.
	if err := stopInbox(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	sent, duplicates, counts, err := b.snapshot(ctx, ib)
	if err != nil {
		return err
	}
	line(time.Since(begin), sent, duplicates, counts)
	fmt.Printf("\nAll rows finished and the inbox stopped: %d records received, %d orders stored, %d duplicates ignored.\n\n",
		sent, storedOrders(counts), duplicates)
	return printPerHandler(ctx, ib, b.ids)
}

// storedOrders is the number of distinct orders stored: one row per handler.
func storedOrders(counts map[inbox.Status]int) int {
	rows := 0
	for _, n := range counts {
		rows += n
	}
	return rows / len(keys)
}

// printPerHandler reads every order's rows with Lookup and prints, per
// handler key, how many rows are done and dead and how many attempts ran.
func printPerHandler(ctx context.Context, ib *inbox.Inbox, ids []uuid.UUID) error {
	type total struct{ done, dead, attempts int }
	totals := make(map[string]*total, len(keys))
	for _, k := range keys {
		totals[k] = &total{}
	}
	var example *inbox.RecordState
	for _, id := range ids {
		states, err := ib.Lookup(ctx, id)
		if err != nil {
			return err
		}
		for _, s := range states {
			t := totals[s.HandlerKey]
			t.attempts += s.Attempts
			switch s.Status {
			case inbox.Done:
				t.done++
			case inbox.Dead:
				t.dead++
				if example == nil {
					example = &s
				}
			}
		}
	}
	fmt.Println("handler        done  dead  attempts")
	for _, k := range keys {
		t := totals[k]
		fmt.Printf("%-13s  %4d  %4d  %8d\n", k, t.done, t.dead, t.attempts)
	}
	if example != nil {
		fmt.Printf("\nA dead row, as Lookup returns it: event %s, handler %s, %d attempts, last error %q\n",
			example.EventID, example.HandlerKey, example.Attempts, example.LastError)
	}
	return nil
}

// broker simulates a consumer of a message broker that redelivers messages.
type broker struct {
	mu         sync.Mutex  // held across Set, so snapshot sees sent and rows agree
	sent       int         // records stored with Set, duplicates included
	duplicates int         // records Set found stored already
	ids        []uuid.UUID // distinct orders stored
}

// consume receives a batch every batchEvery until every order was
// delivered: batchNew new orders plus batchDup redeliveries, one of them of
// an order in the same batch. It stores each batch with Set; only then would
// a real consumer acknowledge the batch to the broker.
func (b *broker) consume(ctx context.Context, client *inbox.Client) error {
	rng := rand.New(rand.NewPCG(1, 2)) // the same redeliveries on every run
	var delivered []*inbox.Record
	tick := time.NewTicker(batchEvery)
	defer tick.Stop()
	for len(delivered) < orders {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		batch := make([]*inbox.Record, 0, batchNew+batchDup)
		for range batchNew {
			payload, _ := json.Marshal(order{Number: len(delivered) + 1})
			rec, err := inbox.NewRecord(uuid.New(), eventType, payload)
			if err != nil {
				return err
			}
			delivered = append(delivered, rec)
			batch = append(batch, rec)
		}
		batch = append(batch, batch[rng.IntN(batchNew)]) // redelivered within the batch
		for range batchDup - 1 {
			batch = append(batch, delivered[rng.IntN(len(delivered))])
		}
		rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })

		b.mu.Lock()
		res, err := client.SetWithResult(ctx, batch...)
		if err == nil {
			b.sent += len(batch)
			b.duplicates += res.Duplicates
			for _, rec := range delivered[len(delivered)-batchNew:] {
				b.ids = append(b.ids, rec.ID())
			}
		}
		b.mu.Unlock()
		if err != nil {
			return err // not acknowledged: the broker would deliver the batch again
		}
	}
	return nil
}

// snapshot returns the records sent and found duplicate so far and the row
// counts, consistently.
func (b *broker) snapshot(ctx context.Context, ib *inbox.Inbox) (int, int, map[inbox.Status]int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	counts, err := ib.Counts(ctx)
	return b.sent, b.duplicates, counts, err
}

// order is the event payload.
type order struct {
	Number int `json:"number"`
}

func parse(payload []byte) (int, error) {
	var o order
	if err := json.Unmarshal(payload, &o); err != nil {
		return 0, fmt.Errorf("bad payload %q: %w", payload, err)
	}
	return o.Number, nil
}

// work simulates a call to another system taking a few milliseconds.
func work(ctx context.Context) error {
	t := time.NewTimer(time.Duration(2+rand.IntN(9)) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// reserveStock always succeeds.
func reserveStock() inbox.Handler {
	return inbox.HandlerFunc("reserve_stock", func(ctx context.Context, payload []byte) error {
		if _, err := parse(payload); err != nil {
			return err
		}
		return work(ctx)
	})
}

// sendEmail is flaky: for orders 5, 10, 15, ... it fails the first two
// attempts, for orders 1, 6, 11, ... the first one; then it succeeds.
func sendEmail() inbox.Handler {
	var mu sync.Mutex
	tries := make(map[int]int)
	return inbox.HandlerFunc("send_email", func(ctx context.Context, payload []byte) error {
		n, err := parse(payload)
		if err != nil {
			return err
		}
		mu.Lock()
		tries[n]++
		try := tries[n]
		mu.Unlock()
		if (n%5 == 0 && try <= 2) || (n%5 == 1 && try == 1) {
			return fmt.Errorf("mail server busy (order %d, try %d)", n, try)
		}
		return work(ctx)
	})
}

// exportERP discards every 50th order: retrying cannot help an unknown
// customer, so those rows go dead after their first attempt.
func exportERP() inbox.Handler {
	return inbox.HandlerFunc("export_erp", func(ctx context.Context, payload []byte) error {
		n, err := parse(payload)
		if err != nil {
			return inbox.Discard(err)
		}
		if n%50 == 0 {
			return inbox.Discard(fmt.Errorf("ERP rejected order %d: unknown customer", n))
		}
		return work(ctx)
	})
}

// countFailures is a middleware that counts failed attempts, of every
// handler.
func countFailures(failed *atomic.Int64) inbox.Middleware {
	return func(ctx context.Context, _ inbox.Attempt, next func(context.Context) error) error {
		err := next(ctx)
		if err != nil {
			failed.Add(1)
		}
		return err
	}
}
