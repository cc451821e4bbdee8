package inboxrabbitmq

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/broker"
)

// Dialer opens a new connection to RabbitMQ. The consumer calls it at
// start and after every loss of its connection or channel, and closes the
// connections it got.
type Dialer func() (*amqp.Connection, error)

// DialURL returns a Dialer of amqp.Dial(url).
func DialURL(url string) Dialer {
	return func() (*amqp.Connection, error) { return amqp.Dial(url) }
}

// ErrRunning is returned by [Consumer.Run] when the consumer is running
// already.
var ErrRunning = errors.New("inboxrabbitmq: consumer already running")

// closeTimeout bounds closing a connection whose peer may be gone.
const closeTimeout = 5 * time.Second

// Consumer moves messages from a RabbitMQ queue into an inbox: it reads a
// batch of deliveries, stores them with one [inbox.Client.Set], and
// acknowledges them only after Set returned nil. Create it with [New] and
// run it with [Consumer.Run].
type Consumer struct {
	dial    Dialer
	client  *inbox.Client
	opts    Options
	running atomic.Bool

	batches, acked, poison, setFailures, connections atomic.Int64
}

// Stats counts what a Consumer did since it was created.
type Stats struct {
	// Batches counts batches stored and acknowledged.
	Batches int64
	// Acked counts messages acknowledged, each after the Set storing it
	// returned nil.
	Acked int64
	// Poison counts messages dead-lettered (rejected without requeue).
	Poison int64
	// SetFailures counts Sets that failed and left their batch
	// unacknowledged.
	SetFailures int64
	// Connections counts channels opened for consuming: 1, plus one per
	// reconnection.
	Connections int64
}

// New returns a consumer of opts.Queue storing into client. It validates
// opts (an error wraps inbox.ErrInvalidConfig, naming the field) and does
// not connect: [Consumer.Run] does.
func New(dial Dialer, client *inbox.Client, opts Options) (*Consumer, error) {
	if dial == nil {
		return nil, fmt.Errorf("%w: inboxrabbitmq: the Dialer is nil", inbox.ErrInvalidConfig)
	}
	if client == nil {
		return nil, fmt.Errorf("%w: inboxrabbitmq: the inbox client is nil", inbox.ErrInvalidConfig)
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Consumer{dial: dial, client: client, opts: o}, nil
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() Stats {
	return Stats{
		Batches:     c.batches.Load(),
		Acked:       c.acked.Load(),
		Poison:      c.poison.Load(),
		SetFailures: c.setFailures.Load(),
		Connections: c.connections.Load(),
	}
}

// Run consumes until ctx ends, then closes its connection and returns nil
// (or [ErrRunning] at once if Run is running already).
//
// It connects with the Dialer, opens a channel with a prefetch count of
// BatchSize, and repeats: collect up to BatchSize deliveries (waiting at
// most BatchWait after the first), dead-letter the poison ones, store the
// rest with one Set, and acknowledge them with one Ack(multiple) of the
// batch's last stored delivery tag, on the channel they came from.
//
// When Set fails the batch stays unacknowledged and the same Set is
// retried after a pause (RetryBackoff, doubling up to MaxRetryBackoff)
// for as long as the channel lives; nothing is acknowledged before Set
// returns nil. When Set refuses records for what they are (an invalid
// record, an event type with no handler under inbox.RejectUnknown), it
// names them ([inbox.RecordsError]): those are dead-lettered
// ([ErrRejected]), each with its own error, and the rest is stored with
// one more Set at once. When Set rejects the batch for a conflict under
// inbox.RejectConflicting, each record is stored by a Set of its own to
// find the culprits, which are dead-lettered ([ErrRejected]).
//
// When the channel or connection is lost, the batch in hand is dropped
// unacknowledged (its delivery tags die with the channel and are never
// used again), and Run dials again after a pause; RabbitMQ redelivers the
// unacknowledged messages, and Set ignores those already stored.
//
// When ctx ends, a batch being collected or whose Set has not returned is
// left unacknowledged, and one whose Set returned nil is acknowledged
// first: a message is never acknowledged before it is committed.
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)
	pause := c.opts.RetryBackoff
	for {
		acked := c.acked.Load()
		err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if c.acked.Load() > acked {
			pause = c.opts.RetryBackoff // the session did work: start over
		}
		c.opts.Logger.Warn("inboxrabbitmq: consumer lost its connection or channel; reconnecting (unacknowledged messages will be redelivered)",
			"queue", c.opts.Queue, "error", err, "retry_in", pause)
		if !sleep(ctx, pause) {
			return nil
		}
		pause = min(2*pause, c.opts.MaxRetryBackoff)
	}
}

// session consumes on one connection until it fails or ctx ends.
func (c *Consumer) session(ctx context.Context) error {
	conn, err := c.dial()
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer func() { _ = conn.CloseDeadline(time.Now().Add(closeTimeout)) }()
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := ch.Qos(c.opts.BatchSize, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	deliveries, err := ch.Consume(c.opts.Queue, c.opts.ConsumerTag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.opts.Queue, err)
	}
	c.connections.Add(1)
	for {
		batch, err := c.collect(ctx, deliveries)
		if err != nil || batch == nil {
			return err
		}
		if err := c.handle(ctx, ch, closed, batch); err != nil {
			return err
		}
	}
}

// errDeliveriesClosed reports the end of the delivery channel.
var errDeliveriesClosed = errors.New("channel closed or consumer cancelled by the server")

// collect returns the next batch; nil when ctx ended (what was collected
// is left unacknowledged).
func (c *Consumer) collect(ctx context.Context, deliveries <-chan amqp.Delivery) ([]amqp.Delivery, error) {
	var batch []amqp.Delivery
	select {
	case <-ctx.Done():
		return nil, nil
	case d, ok := <-deliveries:
		if !ok {
			return nil, errDeliveriesClosed
		}
		batch = append(make([]amqp.Delivery, 0, c.opts.BatchSize), d)
	}
	wait := time.NewTimer(c.opts.BatchWait)
	defer wait.Stop()
	for len(batch) < c.opts.BatchSize {
		select {
		case <-ctx.Done():
			return nil, nil
		case d, ok := <-deliveries:
			if !ok {
				return nil, errDeliveriesClosed
			}
			batch = append(batch, d)
		case <-wait.C:
			return batch, nil
		}
	}
	return batch, nil
}

// handle stores one batch and acknowledges it. An error means the channel
// is lost or ctx ended; the batch's remaining deliveries are then left
// unacknowledged.
func (c *Consumer) handle(ctx context.Context, ch *amqp.Channel, closed <-chan *amqp.Error, batch []amqp.Delivery) error {
	recs := make([]*inbox.Record, 0, len(batch))
	good := make([]*amqp.Delivery, 0, len(batch))
	for i := range batch {
		d := &batch[i]
		rec, err := c.Record(d)
		if err != nil {
			if err := c.deadLetter(ch, d, err); err != nil {
				return err
			}
			continue
		}
		recs, good = append(recs, rec), append(good, d)
	}
	pause := c.opts.RetryBackoff
	for len(recs) > 0 {
		err := c.client.Set(ctx, recs...)
		if err == nil {
			break
		}
		var re *inbox.RecordsError
		if errors.As(err, &re) && len(re.Indexes) > 0 {
			var lost error
			if recs, good, lost = c.refused(ch, re, recs, good); lost != nil {
				return lost
			}
			continue
		}
		if broker.BadInput(err) {
			var lost error
			recs, good, err, lost = c.isolate(ctx, ch, recs, good)
			if lost != nil {
				return lost
			}
			if err == nil {
				break
			}
		}
		c.setFailures.Add(1)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.opts.Logger.Warn("inboxrabbitmq: storing a batch failed; nothing acknowledged, retrying",
			"queue", c.opts.Queue, "records", len(recs), "error", err, "retry_in", pause)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case e := <-closed:
			t.Stop()
			return fmt.Errorf("channel closed while retrying a batch: %v", e)
		case <-t.C:
		}
		pause = min(2*pause, c.opts.MaxRetryBackoff)
	}
	if len(good) == 0 {
		return nil
	}
	// Every delivery of the batch before this tag is stored or was
	// dead-lettered above, so multiple=true acknowledges exactly the
	// stored ones. The tag belongs to ch, the channel they came on.
	if err := ch.Ack(good[len(good)-1].DeliveryTag, true); err != nil {
		return fmt.Errorf("acknowledge a stored batch (its redelivery will be ignored): %w", err)
	}
	c.batches.Add(1)
	c.acked.Add(int64(len(good)))
	return nil
}

// refused dead-letters the deliveries of the records re names, each with
// its own error, and returns the records and deliveries still to store and
// acknowledge, and the error that lost the channel.
func (c *Consumer) refused(ch *amqp.Channel, re *inbox.RecordsError, recs []*inbox.Record, good []*amqp.Delivery) (
	[]*inbox.Record, []*amqp.Delivery, error,
) {
	keptGood, lost := broker.SplitRefused(re, good, func(d *amqp.Delivery, err error) error {
		return c.deadLetter(ch, d, fmt.Errorf("%w: %w", ErrRejected, err))
	})
	if lost != nil {
		return nil, nil, lost
	}
	keptRecs, _ := broker.SplitRefused(re, recs, nil)
	return keptRecs, keptGood, nil
}

// isolate stores the records one Set each, after the batch's Set rejected
// it as bad input otherwise than with a RecordsError (a conflict under
// inbox.RejectConflicting), and dead-letters those rejected alone. It
// returns the records and deliveries still to store and acknowledge (the
// culprits removed), the error of a Set that failed otherwise (to retry),
// and the error that lost the channel.
func (c *Consumer) isolate(ctx context.Context, ch *amqp.Channel, recs []*inbox.Record, good []*amqp.Delivery) (
	[]*inbox.Record, []*amqp.Delivery, error, error,
) {
	keptRecs, keptGood := recs[:0:0], good[:0:0]
	for i, rec := range recs {
		err := c.client.Set(ctx, rec)
		switch {
		case err == nil:
			keptRecs, keptGood = append(keptRecs, rec), append(keptGood, good[i])
		case broker.BadInput(err):
			if lost := c.deadLetter(ch, good[i], fmt.Errorf("%w: %w", ErrRejected, err)); lost != nil {
				return nil, nil, nil, lost
			}
		default:
			return append(keptRecs, recs[i:]...), append(keptGood, good[i:]...), err, nil
		}
	}
	return keptRecs, keptGood, nil, nil
}

// deadLetter rejects a poison delivery without requeue, so that RabbitMQ
// routes it to the queue's dead-letter exchange, and logs why.
func (c *Consumer) deadLetter(ch *amqp.Channel, d *amqp.Delivery, reason error) error {
	if err := ch.Nack(d.DeliveryTag, false, false); err != nil {
		return fmt.Errorf("dead-letter a poison message: %w", err)
	}
	c.poison.Add(1)
	c.opts.Logger.Warn("inboxrabbitmq: poison message dead-lettered",
		"queue", c.opts.Queue, "message_id", d.MessageId, "routing_key", d.RoutingKey,
		"redelivered", d.Redelivered, "error", reason)
	return nil
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
