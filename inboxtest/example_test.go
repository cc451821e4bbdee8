package inboxtest_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/inboxtest"
)

// An Example function has no *testing.T, so this one uses NewSchema where
// a test would call inboxtest.NewPool(t), returns on errors where a test
// would call t.Fatal, and prints what a test would check with
// inboxtest.RequireStatus.
func Example() {
	ctx := context.Background()
	pool, drop, err := inboxtest.NewSchema(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()

	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.HandlerFunc("send_email", func(_ context.Context, payload []byte) error {
		fmt.Printf("mail to %s\n", payload)
		return nil
	}))
	r, err := inboxtest.NewRunner(pool, reg)
	if err != nil {
		fmt.Println(err)
		return
	}

	rec, err := inbox.NewRecord(uuid.New(), "order_created", []byte("ada@example.com"))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := r.Client().Set(ctx, rec); err != nil {
		fmt.Println(err)
		return
	}
	// Drain returns once the handler has run and its result is stored.
	res, err := r.Drain(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("done:", res.Counts[inbox.Done])

	ev, err := r.Admin().Show(ctx, rec.ID())
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, row := range ev.Rows {
		fmt.Printf("%s: %s after %d attempt\n", row.HandlerKey, row.Status, row.Attempts)
	}
	// Output:
	// mail to ada@example.com
	// done: 1
	// send_email: done after 1 attempt
}

// A handler that keeps failing is retried within one Drain when its
// backoff is short, until its row is dead.
func ExampleRunner_Drain() {
	ctx := context.Background()
	pool, drop, err := inboxtest.NewSchema(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer drop()

	reg := inbox.NewRegistry()
	var attempts atomic.Int32 // handlers run on the worker's goroutines
	reg.On("order_created", inbox.HandlerFunc("send_email", func(context.Context, []byte) error {
		fmt.Println("attempt", attempts.Add(1))
		return errors.New("mail server refused")
	}))
	r, err := inboxtest.NewRunner(pool, reg,
		inbox.WithMaxRetryAttempt(3),
		inbox.WithRetryBackoff(time.Millisecond, 5*time.Millisecond))
	if err != nil {
		fmt.Println(err)
		return
	}
	rec, err := inbox.NewRecord(uuid.New(), "order_created", []byte("{}"))
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := r.Client().Set(ctx, rec); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := r.Drain(ctx); err != nil {
		fmt.Println(err)
		return
	}
	ev, err := r.Admin().Show(ctx, rec.ID())
	if err != nil {
		fmt.Println(err)
		return
	}
	row := ev.Rows[0]
	fmt.Printf("%s: %s after %d attempts: %s\n", row.HandlerKey, row.Status, row.Attempts, row.LastError)
	// Output:
	// attempt 1
	// attempt 2
	// attempt 3
	// send_email: dead after 3 attempts: mail server refused
}
