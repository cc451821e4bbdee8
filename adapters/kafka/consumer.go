package inboxkafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/broker"
)

// ErrRunning reports a second call to [Consumer.Run]: a Consumer runs
// once.
var ErrRunning = errors.New("inboxkafka: Run called twice")

// Consumer reads a Kafka consumer group's topics into an inbox: it polls a
// batch, stores it with one [inbox.Client.Set], and commits exactly that
// batch's offsets once Set returned nil. Create it with [New] and run it
// with [Consumer.Run].
type Consumer struct {
	cl    *kgo.Client
	inbox *inbox.Client
	o     Options

	// mu guards pending and revoked, shared with kgo's rebalance
	// callbacks.
	mu sync.Mutex
	// pending holds, per partition, the last record stored in the inbox
	// whose offset commit has not succeeded yet.
	pending map[partition]*kgo.Record
	// revoked holds the partitions revoked or lost since the batch in
	// hand was polled.
	revoked map[partition]bool

	running   atomic.Bool
	closeOnce sync.Once
	stats     stats

	// beforeCommit, set by tests, runs between the Set and the offset
	// commit of each attempt; an error ends the attempt there.
	beforeCommit func() error
}

// partition is a topic's partition.
type partition struct {
	topic string
	id    int32
}

func partitionOf(r *kgo.Record) partition { return partition{r.Topic, r.Partition} }

// New returns a Consumer storing into client the records of opts.Topics,
// read as member of the consumer group opts.Group from the cluster at
// opts.Seeds.
//
// New builds the kgo client itself, from extra followed by the options the
// consumer relies on, which therefore win over any in extra: the seeds,
// group and topics of opts, kgo.DisableAutoCommit, kgo.BlockRebalanceOnPoll
// and its own OnPartitionsRevoked and OnPartitionsLost callbacks. Give
// everything else in extra: SASL (kgo.SASL with
// github.com/twmb/franz-go/pkg/sasl/scram or plain), TLS (kgo.DialTLSConfig),
// kgo.ClientID, kgo.FetchIsolationLevel, kgo.RebalanceTimeout,
// kgo.ConsumeResetOffset, kgo.WithLogger. For example:
//
//	c, err := inboxkafka.New(ib.Client(), inboxkafka.Options{
//		Seeds:           []string{"kafka-1:9093", "kafka-2:9093"},
//		Group:           "orders-inbox",
//		Topics:          []string{"orders"},
//		IDHeader:        "event-id",
//		DeadLetterTopic: "orders-dead",
//	},
//		kgo.DialTLSConfig(&tls.Config{}),
//		kgo.SASL(scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()),
//	)
//
// New validates every option and fails with an error wrapping
// [inbox.ErrInvalidConfig] naming the problem; it does not connect.
func New(client *inbox.Client, opts Options, extra ...kgo.Opt) (*Consumer, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: inboxkafka: inbox client is nil; pass Inbox.Client()", inbox.ErrInvalidConfig)
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	for i, opt := range extra {
		if opt == nil {
			return nil, fmt.Errorf("%w: inboxkafka: kgo option %d is nil", inbox.ErrInvalidConfig, i)
		}
	}
	c := &Consumer{
		inbox:   client,
		o:       o,
		pending: make(map[partition]*kgo.Record),
		revoked: make(map[partition]bool),
	}
	kopts := append(slices.Clone(extra),
		kgo.SeedBrokers(o.Seeds...),
		kgo.ConsumerGroup(o.Group),
		kgo.ConsumeTopics(o.Topics...),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsRevoked(c.onRevoked),
		kgo.OnPartitionsLost(c.onLost),
	)
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("%w: inboxkafka: kgo client: %w", inbox.ErrInvalidConfig, err)
	}
	// A batch may hold a rebalance for MaxBlockRebalance plus the attempt
	// in flight: more than the rebalance timeout, and the coordinator
	// expels the member.
	if rt, ok := cl.OptValue(kgo.RebalanceTimeout).(time.Duration); ok && o.MaxBlockRebalance+o.AttemptTimeout >= rt {
		cl.Close()
		return nil, fmt.Errorf("%w: inboxkafka: Options.MaxBlockRebalance (%v) + Options.AttemptTimeout (%v) must be below the group's rebalance timeout (%v, kgo.RebalanceTimeout)",
			inbox.ErrInvalidConfig, o.MaxBlockRebalance, o.AttemptTimeout, rt)
	}
	c.cl = cl
	return c, nil
}

// Kgo returns the consumer's kgo client, for admin requests and
// inspection. Do not poll, commit or close through it.
func (c *Consumer) Kgo() *kgo.Client { return c.cl }

// Close leaves the group and closes the kgo client. Run does this itself
// when it returns; Close is for a Consumer that never ran. It is safe to
// call more than once.
func (c *Consumer) Close() {
	c.closeOnce.Do(c.cl.CloseAllowingRebalance)
}

// Run consumes until ctx ends, then leaves the group, closes the client and
// returns nil. It returns an error only for a poison record met without a
// [Options.DeadLetterTopic] ([ErrPoisonRecord]), or [ErrRunning] when
// called twice.
//
// Each batch of at most MaxPollRecords records is mapped to inbox
// records, stored with one Set, and its offsets committed synchronously
// once Set returned nil. Records that cannot be stored (poison records)
// are produced to the dead-letter topic, synchronously, before any offset
// of the batch is committed. A failing Set, produce or commit commits
// nothing: the same batch is retried after a backoff (RetryBackoff,
// doubled up to MaxRetryBackoff), for as long as it takes; it is never
// skipped.
//
// While a batch is in hand the group's rebalances wait, for at most
// MaxBlockRebalance plus the attempt in flight (at most AttemptTimeout;
// New checks that the sum is below the group's rebalance timeout); past
// it they are allowed while the batch is retried,
// and the records of partitions revoked meanwhile are dropped from the
// batch uncommitted: their new owner reads them again from the last
// committed offset.
//
// When ctx ends, an attempt in flight finishes (within AttemptTimeout):
// the batch in hand is stored and committed, or left uncommitted; it is
// never committed without being stored.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.Close()
	log := c.o.Logger
	backoff := c.o.RetryBackoff
	for {
		fs := c.cl.PollRecords(ctx, c.o.MaxPollRecords)
		if fs.IsClientClosed() || ctx.Err() != nil {
			return nil // any records polled stay uncommitted
		}
		fetchErr := false
		fs.EachError(func(topic string, p int32, err error) {
			fetchErr = true
			log.Warn("inboxkafka: fetch failed", "topic", topic, "partition", p, "err", err)
		})
		recs := fs.Records()
		if len(recs) == 0 {
			c.cl.AllowRebalance()
			if fetchErr {
				if !sleep(ctx, backoff) {
					return nil
				}
				backoff = min(2*backoff, c.o.MaxRetryBackoff)
			}
			continue
		}
		backoff = c.o.RetryBackoff
		err := c.batch(ctx, recs)
		c.cl.AllowRebalance()
		if err != nil {
			return err
		}
	}
}

// item is one polled record on its way into the inbox.
type item struct {
	kr     *kgo.Record
	rec    *inbox.Record // nil for a poison record
	reason string        // why it is a poison record
	done   bool          // stored or dead-lettered
}

// batch stores and commits recs, retrying until it succeeds or ctx ends.
func (c *Consumer) batch(ctx context.Context, recs []*kgo.Record) error {
	started := time.Now()
	c.mu.Lock()
	clear(c.revoked)
	c.mu.Unlock()
	items := make([]*item, len(recs))
	for i, kr := range recs {
		items[i] = c.mapRecord(kr)
	}
	c.stats.batches.Add(1)
	backoff := c.o.RetryBackoff
	allowed := false
	for {
		items = c.dropRevoked(items)
		if len(items) == 0 {
			return nil
		}
		err := c.attempt(ctx, items)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrPoisonRecord) {
			return err
		}
		c.o.Logger.Warn("inboxkafka: batch not stored and committed; retrying", "records", len(items), "backoff", backoff, "err", err)
		if !allowed && time.Since(started) >= c.o.MaxBlockRebalance {
			c.o.Logger.Warn("inboxkafka: allowing the group to rebalance while retrying the batch", "held", time.Since(started).Round(time.Millisecond))
			c.cl.AllowRebalance()
			allowed = true
		}
		if !sleep(ctx, backoff) {
			c.o.Logger.Info("inboxkafka: stopping with a batch uncommitted", "records", len(items))
			return nil
		}
		backoff = min(2*backoff, c.o.MaxRetryBackoff)
	}
}

// dropRevoked returns items without those of partitions revoked since the
// batch was polled.
func (c *Consumer) dropRevoked(items []*item) []*item {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.revoked) == 0 {
		return items
	}
	return slices.DeleteFunc(items, func(it *item) bool { return c.revoked[partitionOf(it.kr)] })
}

// attempt stores the items not done yet, dead-letters the poison ones and
// commits the offsets of all of them.
func (c *Consumer) attempt(ctx context.Context, items []*item) error {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.o.AttemptTimeout)
	defer cancel()
	var todo, dead []*item
	for _, it := range items {
		switch {
		case it.done:
		case it.rec == nil:
			dead = append(dead, it)
		default:
			todo = append(todo, it)
		}
	}
	if len(todo) > 0 {
		poison, err := c.store(actx, todo)
		if err != nil {
			c.stats.setFailures.Add(1)
			return err
		}
		dead = append(dead, poison...)
	}
	if len(dead) > 0 {
		if err := c.deadLetter(actx, dead); err != nil {
			return err
		}
	}
	if c.beforeCommit != nil {
		if err := c.beforeCommit(); err != nil {
			return err
		}
	}
	return c.commit(actx, items)
}

// store sets items in the inbox. When Set refuses records for what they
// are, it names them ([inbox.RecordsError]): those are returned as poison,
// each with its own error as the reason, and the others stored with one
// more Set. A Set refused for bad input otherwise (a conflict under
// [inbox.RejectConflicting]) is split in halves until the records at fault
// are found. Any other error is returned.
func (c *Consumer) store(ctx context.Context, items []*item) ([]*item, error) {
	recs := make([]*inbox.Record, len(items))
	for i, it := range items {
		recs[i] = it.rec
	}
	res, err := c.inbox.SetWithResult(ctx, recs...)
	if err == nil {
		c.stats.stored.Add(int64(res.New))
		c.stats.duplicates.Add(int64(res.Duplicates + res.Conflicting))
		c.stats.skipped.Add(int64(res.Skipped))
		for _, it := range items {
			it.done = true
		}
		return nil, nil
	}
	var re *inbox.RecordsError
	if errors.As(err, &re) && len(re.Indexes) > 0 {
		var poison []*item
		rest, _ := broker.SplitRefused(re, items, func(it *item, err error) error {
			it.reason = err.Error()
			poison = append(poison, it)
			return nil
		})
		if len(rest) == 0 {
			return poison, nil
		}
		more, err := c.store(ctx, rest)
		if err != nil {
			return nil, err
		}
		return append(poison, more...), nil
	}
	if !broker.BadInput(err) {
		return nil, err
	}
	if len(items) == 1 {
		items[0].reason = err.Error()
		return items, nil
	}
	mid := len(items) / 2
	p1, err := c.store(ctx, items[:mid])
	if err != nil {
		return nil, err
	}
	p2, err := c.store(ctx, items[mid:])
	if err != nil {
		return nil, err
	}
	return append(p1, p2...), nil
}

// deadLetter produces items to the dead-letter topic and waits until the
// cluster has them.
func (c *Consumer) deadLetter(ctx context.Context, items []*item) error {
	if c.o.DeadLetterTopic == "" {
		it := items[0]
		return fmt.Errorf("%w: topic %s partition %d offset %d: %s (set Options.DeadLetterTopic to move such records aside)",
			ErrPoisonRecord, it.kr.Topic, it.kr.Partition, it.kr.Offset, it.reason)
	}
	out := make([]*kgo.Record, len(items))
	for i, it := range items {
		h := append(slices.Clone(it.kr.Headers),
			kgo.RecordHeader{Key: HeaderReason, Value: []byte(it.reason)},
			kgo.RecordHeader{Key: HeaderTopic, Value: []byte(it.kr.Topic)},
			kgo.RecordHeader{Key: HeaderPartition, Value: []byte(strconv.Itoa(int(it.kr.Partition)))},
			kgo.RecordHeader{Key: HeaderOffset, Value: []byte(strconv.FormatInt(it.kr.Offset, 10))},
		)
		out[i] = &kgo.Record{Topic: c.o.DeadLetterTopic, Key: it.kr.Key, Value: it.kr.Value, Headers: h, Timestamp: it.kr.Timestamp}
	}
	if err := c.cl.ProduceSync(ctx, out...).FirstErr(); err != nil {
		return fmt.Errorf("produce %d records to dead-letter topic %s: %w", len(out), c.o.DeadLetterTopic, err)
	}
	for _, it := range items {
		it.done = true
		c.stats.deadLettered.Add(1)
		c.o.Logger.Warn("inboxkafka: record dead-lettered", "topic", it.kr.Topic, "partition", it.kr.Partition,
			"offset", it.kr.Offset, "dead_letter_topic", c.o.DeadLetterTopic, "reason", it.reason)
	}
	return nil
}

// commit commits the offsets of items, with those stored earlier whose
// commit failed, except for partitions revoked meanwhile.
func (c *Consumer) commit(ctx context.Context, items []*item) error {
	c.mu.Lock()
	kept := 0 // items of partitions still ours
	for _, it := range items {
		p := partitionOf(it.kr)
		if c.revoked[p] {
			continue
		}
		kept++
		if prev := c.pending[p]; prev == nil || prev.Offset < it.kr.Offset {
			c.pending[p] = it.kr
		}
	}
	recs := make([]*kgo.Record, 0, len(c.pending))
	for _, r := range c.pending {
		recs = append(recs, r)
	}
	c.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	if err := c.cl.CommitRecords(ctx, recs...); err != nil {
		c.stats.commitFailures.Add(1)
		return fmt.Errorf("commit offsets: %w", err)
	}
	c.stats.committed.Add(int64(kept))
	c.mu.Lock()
	for _, r := range recs {
		if c.pending[partitionOf(r)] == r {
			delete(c.pending, partitionOf(r))
		}
	}
	c.mu.Unlock()
	return nil
}

// onRevoked commits what is stored but not committed of the revoked
// partitions, and marks them so that the batch in hand drops their
// records. kgo calls it when the rebalance is allowed, and on Close.
func (c *Consumer) onRevoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	recs := c.forget(revoked)
	if len(recs) == 0 {
		return
	}
	if err := cl.CommitRecords(ctx, recs...); err != nil {
		// Stored already: the new owner reads them again, the inbox
		// ignores them.
		c.stats.commitFailures.Add(1)
		c.o.Logger.Warn("inboxkafka: commit of revoked partitions failed; their stored records will be redelivered and deduplicated",
			"partitions", len(recs), "err", err)
	}
}

// onLost marks lost partitions and forgets their pending offsets, which
// can no longer be committed.
func (c *Consumer) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	if recs := c.forget(lost); len(recs) > 0 {
		c.o.Logger.Warn("inboxkafka: partitions lost with offsets uncommitted; their stored records will be redelivered and deduplicated",
			"partitions", len(recs))
	}
}

// forget marks partitions revoked and returns their pending records,
// removed from pending.
func (c *Consumer) forget(parts map[string][]int32) []*kgo.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	var recs []*kgo.Record
	for topic, ids := range parts {
		for _, id := range ids {
			p := partition{topic, id}
			c.revoked[p] = true
			if r := c.pending[p]; r != nil {
				recs = append(recs, r)
				delete(c.pending, p)
			}
		}
	}
	return recs
}

// mapRecord maps a Kafka record to an inbox record, or to a poison item
// saying why it cannot.
func (c *Consumer) mapRecord(kr *kgo.Record) *item {
	it := &item{kr: kr}
	id, err := c.eventID(kr)
	if err != nil {
		it.reason = err.Error()
		return it
	}
	et, err := c.eventType(kr)
	if err != nil {
		it.reason = err.Error()
		return it
	}
	date := kr.Timestamp
	if date.IsZero() {
		date = time.Now()
	}
	rec, err := inbox.NewRecord(id, et, kr.Value, date)
	if err != nil {
		it.reason = err.Error()
		return it
	}
	if tc, ok := header(kr, c.o.TraceHeader); ok && tc != "" {
		// Set would refuse the record for a bad trace context: drop that alone.
		if inbox.ValidateTraceContext(tc) == nil {
			rec = rec.WithTraceContext(tc)
		} else {
			c.o.Logger.Warn("inboxkafka: trace context ignored: too long or not text", "topic", kr.Topic,
				"partition", kr.Partition, "offset", kr.Offset, "header", c.o.TraceHeader)
		}
	}
	it.rec = rec
	return it
}

// eventID returns the id of kr: from EventID or IDHeader, else derived
// from its coordinates.
func (c *Consumer) eventID(kr *kgo.Record) (uuid.UUID, error) {
	switch {
	case c.o.EventID != nil:
		id, err := c.o.EventID(kr)
		if err != nil {
			return uuid.Nil, fmt.Errorf("event id: %w", err)
		}
		if id != uuid.Nil {
			return id, nil
		}
	case c.o.IDHeader != "":
		if v, ok := header(kr, c.o.IDHeader); ok {
			id, err := uuid.Parse(v)
			if err != nil {
				return uuid.Nil, fmt.Errorf("id header %q: %w", c.o.IDHeader, err)
			}
			if id == uuid.Nil {
				return uuid.Nil, fmt.Errorf("id header %q holds the nil UUID", c.o.IDHeader)
			}
			return id, nil
		}
	}
	return DerivedID(kr), nil
}

// DerivedID returns the id of a record without one of its own:
// broker.ID("kafka", topic, partition, offset), the same on every
// redelivery of the record.
func DerivedID(kr *kgo.Record) uuid.UUID {
	return broker.ID("kafka", kr.Topic, strconv.Itoa(int(kr.Partition)), strconv.FormatInt(kr.Offset, 10))
}

// eventType returns the event type of kr.
func (c *Consumer) eventType(kr *kgo.Record) (string, error) {
	if c.o.EventType != nil {
		et, err := c.o.EventType(kr)
		if err != nil {
			return "", fmt.Errorf("event type: %w", err)
		}
		return et, nil
	}
	if c.o.EventTypeHeader != "" {
		if v, ok := header(kr, c.o.EventTypeHeader); ok {
			return v, nil
		}
	}
	if et, ok := c.o.EventTypes[kr.Topic]; ok {
		return et, nil
	}
	return kr.Topic, nil
}

// header returns the value of kr's last header named key.
func header(kr *kgo.Record, key string) (string, bool) {
	for i := len(kr.Headers) - 1; i >= 0; i-- {
		if kr.Headers[i].Key == key {
			return string(kr.Headers[i].Value), true
		}
	}
	return "", false
}

// sleep waits d, or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Stats are a Consumer's counts since New.
type Stats struct {
	// Batches counts the batches polled.
	Batches int64
	// Stored counts records Set stored as new; Duplicates those it found
	// stored already (redeliveries, with conflicting ones); Skipped those
	// of unregistered event types under inbox.SkipUnknown.
	Stored, Duplicates, Skipped int64
	// DeadLettered counts records produced to the dead-letter topic.
	DeadLettered int64
	// Committed counts records whose offsets were committed.
	Committed int64
	// SetFailures and CommitFailures count failed attempts to store a
	// batch and to commit offsets.
	SetFailures, CommitFailures int64
}

type stats struct {
	batches, stored, duplicates, skipped, deadLettered, committed, setFailures, commitFailures atomic.Int64
}

// Stats returns the consumer's counts so far.
func (c *Consumer) Stats() Stats {
	s := &c.stats
	return Stats{
		Batches: s.batches.Load(), Stored: s.stored.Load(), Duplicates: s.duplicates.Load(), Skipped: s.skipped.Load(),
		DeadLettered: s.deadLettered.Load(), Committed: s.committed.Load(),
		SetFailures: s.setFailures.Load(), CommitFailures: s.commitFailures.Load(),
	}
}
