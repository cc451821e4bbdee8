package inboxnats

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/broker"
)

// Consumer moves messages from a JetStream durable pull consumer into an
// inbox. Create it with [New] and call [Consumer.Run]. It is safe for
// concurrent use; several Runs share the durable's messages.
type Consumer struct {
	client   *inbox.Client
	opts     Options
	consumer jetstream.Consumer
	stats    stats
	// termReasons: the server keeps TermWithReason's reason (2.10.4 and
	// later); older servers ignore the whole ack, so plain Term is sent.
	termReasons bool
}

// Stats are a Consumer's counters since New.
type Stats struct {
	// Fetched counts messages received from JetStream, redeliveries
	// included.
	Fetched int64
	// Sets counts Sets that returned nil.
	Sets int64
	// Acked counts messages double-acked after their Set.
	Acked int64
	// AckFailures counts double acks that failed after the Set committed;
	// those messages are redelivered and ignored as duplicates.
	AckFailures int64
	// SetFailures counts Sets that failed for a reason other than their
	// input; their messages were negatively acknowledged.
	SetFailures int64
	// Terminated counts poison messages terminated.
	Terminated int64
}

type stats struct {
	fetched, sets, acked, ackFailures, setFailures, terminated atomic.Int64
}

// New checks opts (an error wraps [inbox.ErrInvalidConfig] and names the
// field), then creates the durable pull consumer opts.Durable on
// opts.Stream, or updates it to opts: explicit acks, opts.AckWait,
// unlimited deliveries, opts.FilterSubjects.
func New(ctx context.Context, js jetstream.JetStream, client *inbox.Client, opts Options) (*Consumer, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: inboxnats: JetStream is nil", inbox.ErrInvalidConfig)
	}
	if client == nil {
		return nil, fmt.Errorf("%w: inboxnats: inbox client is nil", inbox.ErrInvalidConfig)
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       opts.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       opts.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: max(MaxBatchSize, 2*opts.BatchSize),
	}
	switch len(opts.FilterSubjects) {
	case 0:
	case 1:
		cfg.FilterSubject = opts.FilterSubjects[0] // works before nats-server 2.10 too
	default:
		cfg.FilterSubjects = opts.FilterSubjects
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, opts.Stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("inboxnats: create or update consumer %q on stream %q: %w", opts.Durable, opts.Stream, err)
	}
	return &Consumer{client: client, opts: opts, consumer: cons, termReasons: atLeast(js.Conn().ConnectedServerVersion(), 2, 10, 4)}, nil
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() Stats {
	return Stats{
		Fetched:     c.stats.fetched.Load(),
		Sets:        c.stats.sets.Load(),
		Acked:       c.stats.acked.Load(),
		AckFailures: c.stats.ackFailures.Load(),
		SetFailures: c.stats.setFailures.Load(),
		Terminated:  c.stats.terminated.Load(),
	}
}

// Info returns the JetStream consumer's state, as the server reports it.
func (c *Consumer) Info(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	return c.consumer.Info(ctx)
}

// Run fetches, stores and acknowledges batches until ctx ends, then
// returns nil. Errors of the broker or the database are logged and retried
// with backoff; they do not end Run. See the package documentation for
// what happens to the batch in hand when ctx ends.
func (c *Consumer) Run(ctx context.Context) error {
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		msgs, err := c.fetch()
		if err != nil {
			backoff = c.next(backoff)
			c.opts.Logger.Warn("inboxnats: fetch failed", "stream", c.opts.Stream, "consumer", c.opts.Durable, "error", err, "retry_in", backoff)
			if !wait(ctx, backoff) {
				return nil
			}
			continue
		}
		if len(msgs) == 0 {
			continue
		}
		c.stats.fetched.Add(int64(len(msgs)))
		if ctx.Err() != nil {
			c.nak(msgs, 0) // not stored: redeliver at once
			return nil
		}
		if left, err := c.process(ctx, msgs); err != nil {
			backoff = c.next(backoff)
			c.stats.setFailures.Add(1)
			c.nak(left, backoff) // back about when the next try is due
			c.opts.Logger.Warn("inboxnats: set failed; messages not acknowledged", "stream", c.opts.Stream, "consumer", c.opts.Durable,
				"messages", len(left), "error", err, "retry_in", backoff)
			if !wait(ctx, backoff) {
				return nil
			}
			continue
		}
		backoff = 0
	}
	return nil
}

// next returns the backoff after one more failure.
func (c *Consumer) next(backoff time.Duration) time.Duration {
	if backoff == 0 {
		return c.opts.RetryBackoff
	}
	return min(2*backoff, c.opts.MaxRetryBackoff)
}

// wait pauses for d, and reports false when ctx ended first.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// fetch returns the next batch: what the stream has now, or when it has
// nothing, the first message within FetchWait and what followed it. An
// error that ends a fetch after some messages came is logged, and those
// messages are returned: they are processed, not left to the ack wait.
func (c *Consumer) fetch() ([]jetstream.Msg, error) {
	msgs, err := c.collect(c.consumer.FetchNoWait(c.opts.BatchSize))
	if err != nil || len(msgs) > 0 {
		return msgs, err
	}
	msgs, err = c.collect(c.consumer.Fetch(1, jetstream.FetchMaxWait(c.opts.FetchWait)))
	if err != nil || len(msgs) == 0 || c.opts.BatchSize == 1 {
		return msgs, err
	}
	more, err := c.collect(c.consumer.FetchNoWait(c.opts.BatchSize - 1))
	if err != nil {
		c.logFetchError(err)
	}
	return append(msgs, more...), nil
}

// logFetchError logs a fetch error that did not stop the batch.
func (c *Consumer) logFetchError(err error) {
	c.opts.Logger.Warn("inboxnats: fetch failed", "stream", c.opts.Stream, "consumer", c.opts.Durable, "error", err)
}

// collect drains a fetch. Messages that came before an error are
// returned without it, the error logged.
func (c *Consumer) collect(b jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
	if err != nil {
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
		if len(msgs) > 0 {
			c.logFetchError(err)
			return msgs, nil
		}
		return nil, err
	}
	return msgs, nil
}

// item is a message in hand and its record.
type item struct {
	msg     jetstream.Msg
	rec     *inbox.Record
	settled bool // acked or terminated
}

// process maps msgs to records, terminates the poison ones and stores the
// rest. On an error that is not the input's, it returns the messages it
// did not settle (neither acked nor terminated), and the error.
func (c *Consumer) process(ctx context.Context, msgs []jetstream.Msg) ([]jetstream.Msg, error) {
	items := make([]*item, 0, len(msgs))
	for _, m := range msgs {
		rec, reason := c.record(m)
		if reason != "" {
			c.terminate(ctx, m, reason)
			continue
		}
		items = append(items, &item{msg: m, rec: rec})
	}
	if len(items) == 0 {
		return nil, nil
	}
	// From here the batch is finished even if ctx ends: Set, then ack,
	// within an ack wait after ctx ended (later acks are pointless).
	fin, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(c.opts.AckWait, cancel)
		context.AfterFunc(fin, func() { t.Stop() })
	})
	defer stop()
	err := c.store(fin, items)
	if err == nil {
		return nil, nil
	}
	var left []jetstream.Msg
	for _, it := range items {
		if !it.settled {
			left = append(left, it.msg)
		}
	}
	return left, err
}

// store stores items with one Set and acks them. When Set refuses records
// for what they are, it names them ([inbox.RecordsError]): those items are
// terminated, each with its own error, and the others stored with one more
// Set. When Set rejects the batch as input otherwise (a conflict under
// [inbox.RejectConflicting]), it stores each half in turn, down to single
// items, and terminates the items rejected alone. It returns Set's other
// errors.
func (c *Consumer) store(ctx context.Context, items []*item) error {
	recs := make([]*inbox.Record, len(items))
	for i, it := range items {
		recs[i] = it.rec
	}
	err := c.client.Set(ctx, recs...)
	if err == nil {
		c.stats.sets.Add(1)
		c.ack(ctx, items)
		return nil
	}
	var re *inbox.RecordsError
	if errors.As(err, &re) && len(re.Indexes) > 0 {
		rest, _ := broker.SplitRefused(re, items, func(it *item, err error) error {
			c.terminate(ctx, it.msg, "inbox rejected the record: "+err.Error())
			it.settled = true
			return nil
		})
		if len(rest) == 0 {
			return nil
		}
		return c.store(ctx, rest)
	}
	if !broker.BadInput(err) {
		return err
	}
	if len(items) == 1 {
		c.terminate(ctx, items[0].msg, "inbox rejected the record: "+err.Error())
		items[0].settled = true
		return nil
	}
	half := len(items) / 2
	if err := c.store(ctx, items[:half]); err != nil {
		return err
	}
	return c.store(ctx, items[half:])
}

// ackParallel bounds the double acks in flight at once: each waits for
// the server's reply, so sending them one after another would cost a
// round trip per message.
const ackParallel = 32

// ack double-acks items after their Set committed, and returns once every
// ack was answered or failed.
func (c *Consumer) ack(ctx context.Context, items []*item) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, ackParallel)
	for _, it := range items {
		it.settled = true
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := it.msg.DoubleAck(ctx); err != nil {
				c.stats.ackFailures.Add(1)
				c.opts.Logger.Warn("inboxnats: ack after commit failed; the redelivery will be ignored as a duplicate",
					"stream", c.opts.Stream, "consumer", c.opts.Durable, "event_id", it.rec.ID(), "error", err)
				return
			}
			c.stats.acked.Add(1)
		})
	}
	wg.Wait()
}

// nak negatively acknowledges msgs, to be redelivered after delay.
func (c *Consumer) nak(msgs []jetstream.Msg, delay time.Duration) {
	for _, m := range msgs {
		var err error
		if delay > 0 {
			err = m.NakWithDelay(delay)
		} else {
			err = m.Nak()
		}
		if err != nil { // the ack wait redelivers it all the same
			c.opts.Logger.Debug("inboxnats: nak failed", "stream", c.opts.Stream, "error", err)
		}
	}
}

// terminate ends a poison message's deliveries.
func (c *Consumer) terminate(ctx context.Context, m jetstream.Msg, reason string) {
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	c.stats.terminated.Add(1)
	seq := uint64(0)
	if md, err := m.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	c.opts.Logger.WarnContext(ctx, "inboxnats: poison message terminated", "stream", c.opts.Stream, "consumer", c.opts.Durable,
		"subject", m.Subject(), "stream_seq", seq, "reason", reason)
	term := m.Term
	if c.termReasons {
		term = func() error { return m.TermWithReason(reason) }
	}
	if err := term(); err != nil {
		c.opts.Logger.Warn("inboxnats: terminate failed; the message will be delivered again", "stream", c.opts.Stream,
			"stream_seq", seq, "error", err)
	}
}

// record maps m to a record, or gives the reason it is poison.
func (c *Consumer) record(m jetstream.Msg) (*inbox.Record, string) {
	md, err := m.Metadata()
	if err != nil {
		return nil, "no JetStream metadata: " + err.Error()
	}
	if n := len(m.Data()); n > inbox.MaxPayloadSize {
		return nil, fmt.Sprintf("payload of %d bytes is over inbox.MaxPayloadSize (%d)", n, inbox.MaxPayloadSize)
	}
	id, reason := c.idOf(m, md)
	if reason != "" {
		return nil, reason
	}
	eventType, reason := c.typeOf(m)
	if reason != "" {
		return nil, reason
	}
	rec, err := inbox.NewRecord(id, eventType, m.Data(), md.Timestamp)
	if err != nil {
		return nil, err.Error()
	}
	if tp := m.Headers().Get(TraceHeader); tp != "" {
		rec = rec.WithTraceContext(tp)
	}
	return rec, ""
}

// idOf gives m's event id.
func (c *Consumer) idOf(m jetstream.Msg, md *jetstream.MsgMetadata) (uuid.UUID, string) {
	if c.opts.IDOf != nil {
		id, err := c.opts.IDOf(m)
		if err != nil {
			return uuid.Nil, "IDOf: " + err.Error()
		}
		return id, ""
	}
	if c.opts.IDHeader != "" {
		if v := m.Headers().Values(c.opts.IDHeader); len(v) > 0 {
			id, err := uuid.Parse(v[0])
			if err != nil {
				return uuid.Nil, fmt.Sprintf("header %s %q is not a UUID", c.opts.IDHeader, v[0])
			}
			return id, ""
		}
	}
	return broker.ID("jetstream", md.Stream, strconv.FormatUint(md.Sequence.Stream, 10)), ""
}

// typeOf gives m's event type.
func (c *Consumer) typeOf(m jetstream.Msg) (string, string) {
	if c.opts.TypeOf != nil {
		t, err := c.opts.TypeOf(m)
		if err != nil {
			return "", "TypeOf: " + err.Error()
		}
		return t, ""
	}
	if c.opts.TypeHeader != "" {
		if t := m.Headers().Get(c.opts.TypeHeader); t != "" {
			return t, ""
		}
	}
	if c.opts.Types != nil {
		t, ok := c.opts.Types[m.Subject()]
		if !ok {
			return "", fmt.Sprintf("no event type for subject %q", m.Subject())
		}
		return t, ""
	}
	return m.Subject(), ""
}

// atLeast reports whether the server version v ("2.10.4", "2.11.0-beta")
// is at least major.minor.patch.
func atLeast(v string, major, minor, patch int) bool {
	v, _, _ = strings.Cut(v, "-")
	var got [3]int
	for i, p := range strings.SplitN(v, ".", 3) {
		n, err := strconv.Atoi(p)
		if err != nil {
			return false
		}
		got[i] = n
	}
	return slices.Compare(got[:], []int{major, minor, patch}) >= 0
}
