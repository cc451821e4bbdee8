package inboxnats_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	inboxnats "github.com/pginbox/inbox/adapters/nats"
	"github.com/pginbox/inbox/internal/testenv"
)

// benchBatch is the batch size of both sides of BenchmarkThroughput.
const benchBatch = inboxnats.DefaultBatchSize

// BenchmarkThroughput measures messages per second from a JetStream stream
// into committed inbox rows, acked (one handler, so one row per message;
// the inbox is not started, so no worker competes with the Sets), beside
// the broker's own consume-and-ack rate without the inbox in the same run:
// the same fetches of benchBatch and double acks, 32 in flight, as the
// Consumer sends them. Each turn has a stream, durable and schema of its
// own; publishing and schema creation are not timed.
//
//	go test -run '^$' -bench Throughput -benchtime 20000x
func BenchmarkThroughput(b *testing.B) {
	testenv.CompareThroughput(b, 5, b.N, benchFloor, benchInbox)
}

// benchEnv is an env whose stream holds n messages of event type "order",
// with ids from their stream sequences.
func benchEnv(b *testing.B, n int) *env {
	e := newEnv(b)
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		msgs[i] = e.msg("order", "", fmt.Sprint("payload of about this size ", i))
	}
	e.publish(msgs...)
	return e
}

// benchFloor times fetching and double-acking n messages with the plain
// client.
func benchFloor(b *testing.B, n int) time.Duration {
	e := benchEnv(b, n)
	ctx := context.Background()
	cons, err := e.js.CreateOrUpdateConsumer(ctx, e.stream, jetstream.ConsumerConfig{
		Durable: e.durable, AckPolicy: jetstream.AckExplicitPolicy, AckWait: inboxnats.DefaultAckWait,
		MaxDeliver: -1, MaxAckPending: inboxnats.MaxBatchSize,
	})
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for acked := 0; acked < n; {
		batch, err := cons.FetchNoWait(benchBatch)
		if err != nil {
			b.Fatal(err)
		}
		got := ackAll(ctx, b, batch)
		if got == 0 {
			b.Fatalf("no message to fetch with %d of %d acked", acked, n)
		}
		acked += got
	}
	return time.Since(start)
}

// ackAll double-acks a batch's messages, 32 in flight as the Consumer
// sends them, and returns how many there were.
func ackAll(ctx context.Context, b *testing.B, batch jetstream.MessageBatch) int {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	n := 0
	for m := range batch.Messages() {
		n++
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := m.DoubleAck(ctx); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return n
}

// benchInbox times a Consumer storing n messages into committed rows until
// it has acked them all.
func benchInbox(b *testing.B, n int) time.Duration {
	e := benchEnv(b, n)
	c, err := inboxnats.New(context.Background(), e.js, e.writer(e.pool), e.options(func(o *inboxnats.Options) {
		o.IDHeader, o.BatchSize = "", benchBatch
	}))
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	stop := e.run(c)
	err = testenv.Poll(5*time.Minute, func() (bool, error) { return c.Stats().Acked >= int64(n), nil })
	d := time.Since(start)
	stop() // reports an error of Run on b
	if err != nil {
		b.Fatalf("waiting for %d acks: %v; %+v", n, err, c.Stats())
	}
	if b.Failed() { // Run returned an error
		b.FailNow()
	}
	if rows := e.rows(); rows != n {
		b.Fatalf("%d rows stored, want %d", rows, n)
	}
	return d
}
