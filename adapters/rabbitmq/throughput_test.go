package inboxrabbitmq_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
	inboxrabbitmq "github.com/pginbox/inbox/adapters/rabbitmq"
	"github.com/pginbox/inbox/internal/testenv"
)

// throughputMessages is how many messages each half of TestThroughput
// moves.
const throughputMessages = 10000

// TestThroughput measures messages per second from a queue into committed
// inbox rows, beside the broker's own floor in the same run: the same
// messages consumed and acknowledged in batches of 100 without the inbox.
// It logs the figures (run with -v) and asserts only that both finish.
// It runs alone (not in parallel), but under -race the figures are low.
func TestThroughput(t *testing.T) {
	r := newRig(t)
	body := `{"order":"` + strings.Repeat("x", 100) + `"}`
	batch := func() []amqp.Publishing {
		msgs := make([]amqp.Publishing, throughputMessages)
		for i := range msgs {
			msgs[i] = message("order_created", uuid.NewString(), body)
		}
		return msgs
	}

	r.publish(batch()...)
	floor := consumeAndAck(t, r.queue, throughputMessages)

	pool := testenv.MigratedPool(t)
	reg, _ := registry()
	writer, err := inbox.New(pool, reg) // not started: Sets only
	if err != nil {
		t.Fatal(err)
	}
	r.publish(batch()...)
	c := newConsumer(t, r, inboxrabbitmq.DialURL(amqpURL), writer.Client(), inboxrabbitmq.Options{})
	started := time.Now()
	stop := run(t, c)
	waitStats(t, c, 2*time.Minute, "every message stored", func(s inboxrabbitmq.Stats) bool {
		return s.Acked == throughputMessages
	})
	through := time.Since(started)
	stop()
	if got := rows(t, pool); got != throughputMessages {
		t.Fatalf("%d rows, want %d", got, throughputMessages)
	}
	rate := func(d time.Duration) float64 { return throughputMessages / d.Seconds() }
	t.Logf("%d messages: broker floor (consume + ack, batches of 100) %.0f msg/s; into the inbox (one Set per batch of %d, then ack) %.0f msg/s (%.0f%% of the floor)",
		throughputMessages, rate(floor), inboxrabbitmq.DefaultBatchSize, rate(through), 100*floor.Seconds()/through.Seconds())
}

// consumeAndAck consumes n messages from queue, acknowledging every
// hundredth with multiple=true, and returns how long it took.
func consumeAndAck(t *testing.T, queue string, n int) time.Duration {
	t.Helper()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(100, 0, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	started := time.Now()
	deliveries, err := ch.ConsumeWithContext(ctx, queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		var d amqp.Delivery
		select {
		case d = <-deliveries:
		case <-ctx.Done():
			t.Fatalf("floor: %d of %d messages consumed", i-1, n)
		}
		if i%100 == 0 || i == n {
			if err := d.Ack(true); err != nil {
				t.Fatal(err)
			}
		}
	}
	return time.Since(started)
}
