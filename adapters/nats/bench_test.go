package inboxnats_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	inboxnats "github.com/pginbox/inbox/adapters/nats"
	"github.com/pginbox/inbox/internal/testenv"
)

// benchMessages is how many messages one benchmark iteration moves.
const benchMessages = 10_000

// benchRound publishes benchMessages new messages with the timer stopped,
// then times until done reports that all of them are through.
func benchRound(b *testing.B, e *env, done func(total int64) bool) {
	var total int64
	for b.Loop() {
		b.StopTimer()
		msgs := make([]*nats.Msg, benchMessages)
		for i := range msgs {
			msgs[i] = e.msg("order", "", fmt.Sprint("payload of about this size ", i))
		}
		e.publish(msgs...)
		total += benchMessages
		b.StartTimer()
		if err := testenv.Poll(5*time.Minute, func() (bool, error) { return done(total), nil }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkInbox: messages per second from the stream into committed
// inbox rows (one handler, so one row per message) and acked, batches of
// DefaultBatchSize. No workers run.
func BenchmarkInbox(b *testing.B) {
	e := newEnv(b)
	c := e.consumer(e.writer(e.pool), e.options(func(o *inboxnats.Options) { o.IDHeader = "" }))
	benchRound(b, e, func(total int64) bool { return c.Stats().Acked >= total })
}

// BenchmarkFloor: the broker's own floor, the same fetches and double
// acks (32 in flight, as the Consumer sends them) without the inbox.
func BenchmarkFloor(b *testing.B) {
	e := newEnv(b)
	cons, err := e.js.CreateOrUpdateConsumer(context.Background(), e.stream, jetstream.ConsumerConfig{
		Durable: e.durable, AckPolicy: jetstream.AckExplicitPolicy, AckWait: inboxnats.DefaultAckWait, MaxDeliver: -1,
	})
	if err != nil {
		b.Fatal(err)
	}
	var acked atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	ackAll := func(batch jetstream.MessageBatch) int {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 32) // as the Consumer acks
		n := 0
		for m := range batch.Messages() {
			n++
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if m.DoubleAck(ctx) == nil {
					acked.Add(1)
				}
			})
		}
		wg.Wait()
		return n
	}
	go func() {
		defer close(stopped)
		for ctx.Err() == nil {
			batch, err := cons.FetchNoWait(inboxnats.DefaultBatchSize)
			if err == nil && ackAll(batch) > 0 {
				continue
			}
			if batch, err = cons.Fetch(1, jetstream.FetchMaxWait(100*time.Millisecond)); err == nil {
				ackAll(batch)
			}
		}
	}()
	defer func() { cancel(); <-stopped }()
	benchRound(b, e, func(total int64) bool { return acked.Load() >= total })
}
