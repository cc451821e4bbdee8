package inboxredis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/broker"
)

// entry is one stream entry of a batch, with the record made of it or the
// reason it is dead-lettered.
type entry struct {
	stream string
	msg    redis.XMessage
	rec    *inbox.Record
	reason string
}

// Fields of a dead letter, before the original entry's fields.
const (
	// DeadReasonField holds why the entry was dead-lettered.
	DeadReasonField = "dead.reason"
	// DeadStreamField holds the stream the entry was read from.
	DeadStreamField = "dead.stream"
	// DeadIDField holds the entry's id in that stream.
	DeadIDField = "dead.id"
	// DeadGroupField holds the consumer group.
	DeadGroupField = "dead.group"
	// DeadConsumerField holds the name of the consumer that dead-lettered it.
	DeadConsumerField = "dead.consumer"
)

// process stores a batch and acknowledges it: entries that cannot become
// records are dead-lettered then acknowledged; the others are stored with
// one Set (one more when Set refuses some of them, which are
// dead-lettered), then acknowledged. The batch is finished with a context
// that outlives ctx by StopTimeout, so that a stop commits and
// acknowledges what it has in hand.
func (c *Consumer) process(ctx context.Context, batch []*entry) error {
	if len(batch) == 0 {
		return nil
	}
	c.stats.read.Add(int64(len(batch)))
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(c.o.StopTimeout, cancel) })
	defer stop()

	var good, bad, deleted []*entry
	for _, e := range batch {
		switch {
		case len(e.msg.Values) == 0:
			deleted = append(deleted, e)
		default:
			if e.rec, e.reason = c.record(e.stream, e.msg); e.rec != nil {
				good = append(good, e)
			} else {
				bad = append(bad, e)
			}
		}
	}
	if len(deleted) > 0 {
		if err := c.ack(bctx, deleted); err != nil {
			return err
		}
		c.stats.deleted.Add(int64(len(deleted)))
		for _, e := range deleted {
			c.o.Logger.Warn("inboxredis: pending entry was deleted from its stream before it was stored; acknowledged",
				"stream", e.stream, "entry_id", e.msg.ID, "group", c.o.Group)
		}
	}
	if err := c.deadLetter(bctx, bad); err != nil {
		return err
	}
	stored, poison, setErr := c.store(bctx, good)
	var ackErr error
	if len(stored) > 0 {
		ackErr = c.ack(bctx, stored)
	}
	var dlErr error
	if len(poison) > 0 {
		dlErr = c.deadLetter(bctx, poison)
	}
	return errors.Join(setErr, ackErr, dlErr)
}

// record maps an entry of stream to a record, or returns why it cannot.
func (c *Consumer) record(stream string, m redis.XMessage) (*inbox.Record, string) {
	str := func(field string) (string, bool) {
		v, ok := m.Values[field]
		if !ok {
			return "", false
		}
		s, ok := v.(string)
		return s, ok
	}
	var id uuid.UUID
	switch {
	case c.o.IDField != "":
		v, ok := str(c.o.IDField)
		if !ok {
			return nil, fmt.Sprintf("%v: no id field %q", ErrInvalidMessage, c.o.IDField)
		}
		var err error
		if id, err = uuid.Parse(v); err != nil {
			return nil, fmt.Sprintf("%v: id field %q: %q is not a UUID", ErrInvalidMessage, c.o.IDField, bounded(v))
		}
	case c.o.ID != nil:
		var err error
		if id, err = c.o.ID(stream, m); err != nil {
			return nil, fmt.Sprintf("%v: id: %v", ErrInvalidMessage, err)
		}
	default:
		id = broker.ID("redis", stream, m.ID)
	}
	typ := c.o.Streams[stream]
	if typ == "" {
		v, ok := str(c.o.TypeField)
		if !ok {
			return nil, fmt.Sprintf("%v: no event type field %q", ErrInvalidMessage, c.o.TypeField)
		}
		typ = v
	}
	payload, ok := str(c.o.PayloadField)
	if !ok {
		return nil, fmt.Sprintf("%v: no payload field %q", ErrInvalidMessage, c.o.PayloadField)
	}
	if len(payload) > inbox.MaxPayloadSize {
		return nil, fmt.Sprintf("%v: payload is %d bytes, the limit is %d (inbox.MaxPayloadSize)",
			inbox.ErrInvalidRecord, len(payload), inbox.MaxPayloadSize)
	}
	rec, err := inbox.NewRecord(id, typ, []byte(payload), entryTime(m.ID))
	if err != nil {
		return nil, err.Error()
	}
	if tp, ok := str(c.o.TraceField); ok && tp != "" {
		if inbox.ValidateTraceContext(tp) == nil {
			rec = rec.WithTraceContext(tp)
		} else {
			c.o.Logger.Debug("inboxredis: trace context not kept: too long or not text",
				"stream", stream, "entry_id", m.ID, "bytes", len(tp))
		}
	}
	return rec, ""
}

// bounded cuts s to 100 bytes for an error text.
func bounded(s string) string {
	if len(s) <= 100 {
		return s
	}
	return strings.ToValidUTF8(s[:100], "") + "..."
}

// entryTime returns the time in a stream entry id ("<ms>-<seq>"): when
// Redis added the entry. Ids it cannot read give now.
func entryTime(id string) time.Time {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || n <= 0 {
		return time.Now()
	}
	return time.UnixMilli(n)
}

// store stores the entries' records with one Set. When Set refuses
// records for what they are, it returns their entries as poison, each with
// its own error as the reason, and stores the others with one more Set:
// the records an [inbox.RecordsError] names (invalid, or of an unknown
// event type under [inbox.RejectUnknown]) and those with the ids an
// [inbox.ConflictError] names (under [inbox.RejectConflicting]). Any other
// error, or one that names none of the records, returns at once, with what
// was stored until then.
func (c *Consumer) store(ctx context.Context, es []*entry) (stored, poison []*entry, err error) {
	if len(es) == 0 {
		return nil, nil, nil
	}
	recs := make([]*inbox.Record, len(es))
	for i, e := range es {
		recs[i] = e.rec
	}
	res, err := c.client.SetWithResult(ctx, recs...)
	if err == nil {
		c.stats.stored.Add(int64(res.New))
		c.stats.duplicates.Add(int64(res.Duplicates + res.Conflicting))
		c.stats.skipped.Add(int64(res.Skipped))
		return es, nil, nil
	}
	var rest []*entry
	var re *inbox.RecordsError
	var ce *inbox.ConflictError
	switch {
	case errors.As(err, &re):
		rest, _ = broker.SplitRefused(re, es, func(e *entry, err error) error {
			e.reason = err.Error()
			poison = append(poison, e)
			return nil
		})
	case errors.As(err, &ce):
		for _, e := range es {
			if slices.Contains(ce.IDs, e.rec.ID()) {
				e.reason = fmt.Sprintf("%v: event %s", inbox.ErrConflictingDuplicate, e.rec.ID())
				poison = append(poison, e)
			} else {
				rest = append(rest, e)
			}
		}
	}
	if len(poison) == 0 {
		return nil, nil, err
	}
	stored, more, err := c.store(ctx, rest)
	return stored, append(poison, more...), err
}

// ack acknowledges the entries, with one XACK per stream.
func (c *Consumer) ack(ctx context.Context, es []*entry) error {
	ids := map[string][]string{}
	for _, e := range es {
		ids[e.stream] = append(ids[e.stream], e.msg.ID)
	}
	cmds, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for s, list := range ids {
			p.XAck(ctx, s, c.o.Group, list...)
		}
		return nil
	})
	for _, cmd := range cmds {
		if n, err := cmd.(*redis.IntCmd).Result(); err == nil {
			c.stats.acked.Add(n)
		}
	}
	if err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	return nil
}

// deadLetter adds each entry, with its reason, to its stream's dead-letter
// stream, then acknowledges those that were added.
func (c *Consumer) deadLetter(ctx context.Context, es []*entry) error {
	if len(es) == 0 {
		return nil
	}
	cmds, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, e := range es {
			values := []any{
				DeadReasonField, e.reason, DeadStreamField, e.stream, DeadIDField, e.msg.ID,
				DeadGroupField, c.o.Group, DeadConsumerField, c.o.Consumer,
			}
			fields := make([]string, 0, len(e.msg.Values))
			for f := range e.msg.Values {
				fields = append(fields, f)
			}
			slices.Sort(fields)
			for _, f := range fields {
				values = append(values, f, e.msg.Values[f])
			}
			p.XAdd(ctx, &redis.XAddArgs{Stream: e.stream + c.o.DeadLetterSuffix, Values: values})
		}
		return nil
	})
	var added []*entry
	for i, cmd := range cmds {
		if cmd.Err() != nil {
			continue
		}
		e := es[i]
		added = append(added, e)
		c.o.Logger.Warn("inboxredis: entry dead-lettered", "stream", e.stream, "entry_id", e.msg.ID,
			"dead_letter_stream", e.stream+c.o.DeadLetterSuffix, "group", c.o.Group, "reason", e.reason)
	}
	c.stats.deadLettered.Add(int64(len(added)))
	var ackErr error
	if len(added) > 0 {
		ackErr = c.ack(ctx, added)
	}
	if err != nil {
		err = fmt.Errorf("dead-letter: %w", err)
	}
	return errors.Join(err, ackErr)
}
