package inboxkafka_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pginbox/inbox"
	inboxkafka "github.com/pginbox/inbox/adapters/kafka"
	"github.com/pginbox/inbox/internal/testenv"
)

// BenchmarkThroughput measures messages per second from a topic of four
// partitions into committed inbox rows (the consumer into an inbox that
// is not started: storing only), beside the floor measured in the same
// run: a plain kgo consumer group polling and committing the same number
// of messages, with the same batch size, without the inbox. Each turn has
// a topic and a group of its own; producing and creating topics are
// outside the timed part, joining the group is inside it for both.
//
//	go test -run '^$' -bench Throughput -benchtime 20000x
func BenchmarkThroughput(b *testing.B) {
	const partitions, eventType = 4, "bench"
	seeds := cluster(b, partitions)
	adm := kadm.NewClient(kafkaClient(b, seeds))
	producer := kafkaClient(b, seeds, kgo.ProducerLinger(0))
	pool := testenv.MigratedPool(b)
	reg := inbox.NewRegistry()
	reg.Handle(eventType, inbox.HandlerFunc("noop", func(context.Context, []byte) error { return nil }))
	ib, err := inbox.New(pool, reg, inbox.WithLogger(testenv.Logger(b)))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	turn, storedSoFar := 0, 0

	// topicOf creates a topic and produces n events to it.
	topicOf := func(b *testing.B, n int) string {
		turn++
		topic := fmt.Sprintf("bench-%d", turn)
		if _, err := adm.CreateTopic(ctx, partitions, 1, nil, topic); err != nil {
			b.Fatalf("create topic: %v", err)
		}
		recs := make([]*kgo.Record, n)
		for i := range recs {
			recs[i] = event(topic, uuid.New())
		}
		if err := producer.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			b.Fatalf("produce: %v", err)
		}
		return topic
	}

	floor := func(b *testing.B, n int) time.Duration {
		topic := topicOf(b, n)
		started := time.Now()
		cl, err := kgo.NewClient(append(fastGroup(), kgo.SeedBrokers(seeds...), kgo.ConsumerGroup(topic),
			kgo.ConsumeTopics(topic), kgo.DisableAutoCommit(), kgo.BlockRebalanceOnPoll())...)
		if err != nil {
			b.Fatal(err)
		}
		defer cl.Close()
		pctx, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		for done := 0; done < n; {
			fs := cl.PollRecords(pctx, crashBatch)
			if err := pctx.Err(); err != nil {
				b.Fatalf("floor: poll: %v after %d messages", err, done)
			}
			rs := fs.Records()
			if len(rs) > 0 {
				if err := cl.CommitRecords(pctx, rs...); err != nil {
					b.Fatalf("floor: commit: %v", err)
				}
			}
			done += len(rs)
			cl.AllowRebalance()
		}
		return time.Since(started)
	}

	subject := func(b *testing.B, n int) time.Duration {
		topic := topicOf(b, n)
		var clock commitClock
		started := time.Now()
		c, err := inboxkafka.New(ib.Client(), inboxkafka.Options{
			Seeds: seeds, Group: topic, Topics: []string{topic}, IDHeader: idHeader,
			EventTypes: map[string]string{topic: eventType}, MaxPollRecords: crashBatch, Logger: testenv.Logger(b),
		}, append(fastGroup(), kgo.WithHooks(&clock))...)
		if err != nil {
			b.Fatal(err)
		}
		stop := run(b, c)
		err = testenv.Poll(within, func() (bool, error) { return c.Stats().Committed >= int64(n), nil })
		stop() // reports an error of Run on b
		if err != nil {
			b.Fatalf("consumer: %v", err)
		}
		if b.Failed() { // Run returned an error
			b.FailNow()
		}
		storedSoFar += n
		if got, err := stored(ctx, pool); err != nil || got != storedSoFar {
			b.Fatalf("%d events stored (%v), want %d", got, err, storedSoFar)
		}
		if u, err := unacked(ctx, adm, topic, topic, n); err != nil || u != 0 {
			b.Fatalf("%d messages unacked (%v), want 0", u, err)
		}
		return time.Unix(0, clock.last.Load()).Sub(started)
	}

	testenv.CompareThroughput(b, 5, b.N, floor, subject)
}

// commitClock is a kgo hook keeping the time the last offset commit's
// response was read: the subject's clock stops there, not when a poll of
// the consumer's stats notices it.
type commitClock struct{ last atomic.Int64 } // Unix nanoseconds

// OnBrokerRead implements kgo.HookBrokerRead.
func (c *commitClock) OnBrokerRead(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	const offsetCommit = 8 // kmsg.OffsetCommit
	if key == offsetCommit && err == nil {
		c.last.Store(time.Now().UnixNano())
	}
}
