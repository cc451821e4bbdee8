package inboxkafka_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pginbox/inbox"
	inboxkafka "github.com/pginbox/inbox/adapters/kafka"
	"github.com/pginbox/inbox/internal/testenv"
)

func TestNewValidates(t *testing.T) {
	ib, _ := startInbox(t, testenv.MigratedPool(t), "t")
	good := func() inboxkafka.Options {
		return inboxkafka.Options{Seeds: []string{"127.0.0.1:1"}, Group: "g", Topics: []string{"t"}}
	}
	for _, tc := range []struct {
		name  string
		edit  func(*inboxkafka.Options)
		extra []kgo.Opt
		want  string
	}{
		{"no seeds", func(o *inboxkafka.Options) { o.Seeds = nil }, nil, "Seeds"},
		{"blank seed", func(o *inboxkafka.Options) { o.Seeds = []string{" "} }, nil, "Seeds"},
		{"no group", func(o *inboxkafka.Options) { o.Group = "" }, nil, "Group"},
		{"no topics", func(o *inboxkafka.Options) { o.Topics = nil }, nil, "Topics"},
		{"dead letters consumed", func(o *inboxkafka.Options) { o.DeadLetterTopic = "t" }, nil, "DeadLetterTopic"},
		{"blank mapped type", func(o *inboxkafka.Options) { o.EventTypes = map[string]string{"t": ""} }, nil, "EventTypes"},
		{"too many records", func(o *inboxkafka.Options) { o.MaxPollRecords = inboxkafka.MaxMaxPollRecords + 1 }, nil, "MaxPollRecords"},
		{"negative backoff", func(o *inboxkafka.Options) { o.RetryBackoff = -time.Second }, nil, "RetryBackoff"},
		{"max below base", func(o *inboxkafka.Options) { o.RetryBackoff, o.MaxRetryBackoff = time.Second, time.Millisecond }, nil, "MaxRetryBackoff"},
		{"hold past the rebalance timeout", func(*inboxkafka.Options) {}, []kgo.Opt{kgo.RebalanceTimeout(40 * time.Second)}, "rebalance timeout"},
		{"nil kgo option", func(*inboxkafka.Options) {}, []kgo.Opt{nil}, "nil"},
	} {
		o := good()
		tc.edit(&o)
		c, err := inboxkafka.New(ib.Client(), o, tc.extra...)
		if !errors.Is(err, inbox.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v, want an ErrInvalidConfig naming %s", tc.name, err, tc.want)
		}
		if c != nil {
			c.Close()
		}
	}
	if _, err := inboxkafka.New(nil, good()); !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Errorf("nil inbox client: New = %v, want ErrInvalidConfig", err)
	}
	c, err := inboxkafka.New(ib.Client(), good())
	if err != nil {
		t.Fatalf("New with good options: %v", err)
	}
	c.Close()
	c.Close()
}

// TestPoisonWithoutDeadLetterTopic: Run stops at a poison record and
// commits nothing of its batch.
func TestPoisonWithoutDeadLetterTopic(t *testing.T) {
	const topic, group = "orders", "inbox"
	seeds := cluster(t, 1, topic)
	ib, _ := startInbox(t, testenv.MigratedPool(t), topic)
	produce(t, seeds, []*kgo.Record{
		event(topic, uuid.New()),
		{Topic: topic, Value: []byte("x"), Headers: []kgo.RecordHeader{{Key: idHeader, Value: []byte("not-a-uuid")}}},
	})
	c, err := inboxkafka.New(ib.Client(), inboxkafka.Options{
		Seeds: seeds, Group: group, Topics: []string{topic}, IDHeader: idHeader, Logger: testenv.Logger(t),
	}, fastGroup()...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := c.Run(ctx); !errors.Is(err, inboxkafka.ErrPoisonRecord) || !strings.Contains(err.Error(), "offset 1") {
		t.Fatalf("Run = %v, want ErrPoisonRecord at offset 1", err)
	}
	if err := c.Run(ctx); !errors.Is(err, inboxkafka.ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
	adm := kadm.NewClient(kafkaClient(t, seeds))
	if n := committedCount(ctx, t, adm, group, topic); n != 0 {
		t.Errorf("%d partitions committed, want none", n)
	}
}
