package inboxrabbitmq_test

import (
	"context"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
	inboxrabbitmq "github.com/pginbox/inbox/adapters/rabbitmq"
	"github.com/pginbox/inbox/internal/testenv"
)

// BenchmarkThroughput reports messages per second from a RabbitMQ queue
// into committed inbox rows (msgs/s), beside RabbitMQ's own rate of
// consuming and acknowledging the same number of messages without the
// inbox (floor-msgs/s), measured in turns in the same run; b.N is the
// number of messages per turn:
//
//	go test -run '^$' -bench Throughput -benchtime 20000x
//
// Each turn publishes b.N persistent messages of about 100 bytes first
// (not timed). The floor then times dialing, consuming them with a
// prefetch of 100 and acknowledging every hundredth with multiple=true,
// and closing. The subject times a Consumer (batches of 100, its
// default) storing them into an inbox that is not started (Sets only), in
// a fresh schema, from Run until it has acknowledged them all and closed
// its connection. Each turn then checks, untimed, that RabbitMQ has no
// message left, and the subject's that every one is stored.
func BenchmarkThroughput(b *testing.B) {
	r := newRig(b)
	body := `{"order":"` + strings.Repeat("x", 100) + `"}`
	publish := func(n int) {
		msgs, _ := stream(n)
		for i := range msgs {
			msgs[i].Body = []byte(body)
		}
		r.publish(msgs...)
	}
	floor := func(b *testing.B, n int) time.Duration {
		publish(n)
		took := consumeAndAck(b, r.queue, n)
		if left, err := r.unacked(r.queue); err != nil || left != 0 {
			b.Fatalf("floor: %d messages left on RabbitMQ (%v), want 0", left, err)
		}
		return took
	}
	subject := func(b *testing.B, n int) time.Duration {
		publish(n)
		pool := testenv.MigratedPool(b)
		defer pool.Close()
		reg, _ := registry()
		writer, err := inbox.New(pool, reg) // not started: Sets only
		if err != nil {
			b.Fatal(err)
		}
		c := newConsumer(b, r, inboxrabbitmq.DialURL(amqpURL), writer.Client(), inboxrabbitmq.Options{})
		started := time.Now()
		stop := run(b, c)
		waitStats(b, c, 5*time.Minute, "every message acknowledged", func(s inboxrabbitmq.Stats) bool {
			return s.Acked >= int64(n)
		})
		stop()
		took := time.Since(started)
		if left, err := r.unacked(r.queue); err != nil || left != 0 {
			b.Fatalf("%d messages left on RabbitMQ (%v), want 0", left, err)
		}
		if got := rows(b, pool); got != n {
			b.Fatalf("%d rows stored, want %d", got, n)
		}
		return took
	}
	testenv.CompareThroughput(b, 5, b.N, floor, subject)
}

// consumeAndAck dials RabbitMQ, consumes n messages from queue with a
// prefetch of 100, acknowledging every hundredth (and the last) with
// multiple=true, closes the connection, and returns how long all that
// took. RabbitMQ has then taken every acknowledgement: it answers the
// close after the frames before it.
func consumeAndAck(b *testing.B, queue string, n int) time.Duration {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	started := time.Now()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Qos(inboxrabbitmq.DefaultBatchSize, 0, false); err != nil {
		b.Fatal(err)
	}
	deliveries, err := ch.ConsumeWithContext(ctx, queue, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		var d amqp.Delivery
		select {
		case d = <-deliveries:
		case <-ctx.Done():
			b.Fatalf("floor: %d of %d messages consumed", i-1, n)
		}
		if i%inboxrabbitmq.DefaultBatchSize == 0 || i == n {
			if err := d.Ack(true); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := conn.Close(); err != nil {
		b.Fatal(err)
	}
	return time.Since(started)
}
