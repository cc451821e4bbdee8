package inboxredis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
)

// ErrRunning is returned by [Consumer.Run] when the Consumer is running
// already.
var ErrRunning = errors.New("inboxredis: consumer is running already")

// Consumer moves entries of Redis streams into an inbox. Create it with
// [New] and call [Consumer.Run]. Its methods are safe for concurrent use.
type Consumer struct {
	rdb     redis.Cmdable
	client  *inbox.Client
	o       Options
	streams []string // sorted

	running atomic.Bool
	stats   stats
}

// Stats counts what a [Consumer] did since it was created.
type Stats struct {
	// Read counts entries read, re-read after a failure, or claimed.
	Read int64
	// Claimed counts entries taken over from other consumers (XAUTOCLAIM).
	Claimed int64
	// Stored counts records Set stored as new.
	Stored int64
	// Duplicates counts records Set found stored already (redeliveries),
	// conflicting ones included.
	Duplicates int64
	// Skipped counts records of event types with no handler that Set
	// skipped under [inbox.SkipUnknown].
	Skipped int64
	// DeadLettered counts entries added to a dead-letter stream.
	DeadLettered int64
	// Deleted counts pending entries that were deleted from their stream
	// before they could be stored; they are acknowledged and logged.
	Deleted int64
	// Acked counts entries acknowledged.
	Acked int64
	// Failures counts failed Sets and Redis commands, each followed by a
	// backoff.
	Failures int64
}

type stats struct {
	read, claimed, stored, duplicates, skipped, deadLettered, deleted, acked, failures atomic.Int64
}

// New returns a Consumer that reads rdb's streams through a consumer group
// and stores their entries with client. It checks opts (errors wrap
// [inbox.ErrInvalidConfig]) and touches neither Redis nor the database.
//
// rdb may be a *redis.Client or anything else implementing redis.Cmdable;
// on a Redis Cluster all streams of one Consumer must share a hash slot
// (one {tag}), as a read spans them all.
func New(rdb redis.Cmdable, client *inbox.Client, opts Options) (*Consumer, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: inboxredis.New: the Redis client is nil", inbox.ErrInvalidConfig)
	}
	if client == nil {
		return nil, fmt.Errorf("%w: inboxredis.New: the inbox client is nil", inbox.ErrInvalidConfig)
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.StartID != "$" && !streamID.MatchString(o.StartID) {
		return nil, invalid("StartID", fmt.Sprintf("%q", o.StartID), `must be "$" or a stream id such as "0" or "1700000000000-0"`)
	}
	c := &Consumer{rdb: rdb, client: client, o: o}
	for s := range o.Streams {
		c.streams = append(c.streams, s)
	}
	slices.Sort(c.streams)
	return c, nil
}

var streamID = regexp.MustCompile(`^[0-9]+(-[0-9]+)?$`)

// Stats returns what the Consumer did so far.
func (c *Consumer) Stats() Stats {
	s := &c.stats
	return Stats{
		Read: s.read.Load(), Claimed: s.claimed.Load(), Stored: s.stored.Load(),
		Duplicates: s.duplicates.Load(), Skipped: s.skipped.Load(), DeadLettered: s.deadLettered.Load(),
		Deleted: s.deleted.Load(), Acked: s.acked.Load(), Failures: s.failures.Load(),
	}
}

// Run consumes the streams until ctx ends, then returns nil.
//
// It creates the group on each stream where it is missing, reads the
// entries still pending under its own name, then new ones, and every
// ClaimIdle/2 takes over the entries idle for ClaimIdle with other
// consumers. Each batch is stored with one Set and acknowledged once Set
// returned nil. After a failed Set or Redis command it logs the error,
// backs off (exponentially, up to MaxRetryBackoff) and re-reads its
// pending entries. When ctx ends with a batch in hand, the batch is still
// committed and acknowledged within StopTimeout, or left pending.
//
// Run returns an error only when it cannot work at all: it is running
// already ([ErrRunning]), or Redis refuses to create the group for good
// (a key of another type, no permission).
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)
	log := c.o.Logger
	var (
		groups    bool      // groups exist
		pending   = true    // own pending entries to re-read first
		nextClaim time.Time // when to look for idle entries of others
		failures  int
	)
	for ctx.Err() == nil {
		var err error
		switch {
		case !groups:
			if err = c.createGroups(ctx); err == nil {
				groups = true
			} else if permanent(err) {
				return fmt.Errorf("inboxredis: create group %q: %w", c.o.Group, err)
			}
		case pending:
			var n int
			if n, err = c.read(ctx, "0"); err == nil && n == 0 {
				pending = false
			}
		case !time.Now().Before(nextClaim):
			if err = c.claim(ctx); err == nil {
				nextClaim = time.Now().Add(c.o.ClaimIdle / 2)
			}
		default:
			_, err = c.read(ctx, ">")
		}
		if err == nil {
			failures = 0
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if strings.Contains(err.Error(), "NOGROUP") {
			groups = false // deleted meanwhile: create it again
		}
		failures++
		c.stats.failures.Add(1)
		pending = true
		d := c.backoff(failures)
		log.Error("inboxredis: consumer step failed; entries not acknowledged stay pending and are read again after a pause",
			"group", c.o.Group, "consumer", c.o.Consumer, "retry_in", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return nil
}

// backoff returns the pause after the nth failure in a row: the base
// doubled n-1 times, capped, and jittered to between half and all of it.
func (c *Consumer) backoff(n int) time.Duration {
	d := c.o.MaxRetryBackoff
	if n < 40 {
		d = min(d, c.o.RetryBackoff<<(n-1))
	}
	return d/2 + rand.N(d/2+1)
}

// permanent reports whether a Redis error will not go away by retrying.
func permanent(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "WRONGTYPE") || strings.HasPrefix(msg, "NOPERM") || strings.HasPrefix(msg, "NOAUTH")
}

// createGroups creates the group on every stream that lacks it.
func (c *Consumer) createGroups(ctx context.Context) error {
	for _, s := range c.streams {
		err := c.rdb.XGroupCreateMkStream(ctx, s, c.o.Group, c.o.StartID).Err()
		if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return fmt.Errorf("stream %q: %w", s, err)
		}
	}
	return nil
}

// read reads one batch from every stream, from id ("0": this consumer's
// pending entries; ">": new ones), processes it and returns its size.
func (c *Consumer) read(ctx context.Context, id string) (int, error) {
	args := make([]string, 0, 2*len(c.streams))
	args = append(args, c.streams...)
	for range c.streams {
		args = append(args, id)
	}
	block := time.Duration(-1) // a pending read returns at once
	if id == ">" {
		block = c.o.Block
	}
	res, err := c.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: c.o.Group, Consumer: c.o.Consumer, Streams: args, Count: int64(c.o.BatchSize), Block: block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", id, err)
	}
	var batch []*entry
	for _, s := range res {
		for _, m := range s.Messages {
			batch = append(batch, &entry{stream: s.Stream, msg: m})
		}
	}
	return len(batch), c.process(ctx, batch)
}

// claim takes over, stream by stream, the entries idle for ClaimIdle,
// a batch at a time, processing each batch, until XAUTOCLAIM's cursor
// comes back to "0-0".
func (c *Consumer) claim(ctx context.Context) error {
	for _, s := range c.streams {
		start := "0-0"
		for ctx.Err() == nil {
			msgs, next, err := c.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
				Stream: s, Group: c.o.Group, Consumer: c.o.Consumer,
				MinIdle: c.o.ClaimIdle, Start: start, Count: int64(c.o.BatchSize),
			}).Result()
			if err != nil {
				return fmt.Errorf("claim from stream %q: %w", s, err)
			}
			if len(msgs) > 0 {
				c.stats.claimed.Add(int64(len(msgs)))
				c.o.Logger.Info("inboxredis: took over idle entries", "stream", s, "group", c.o.Group,
					"consumer", c.o.Consumer, "entries", len(msgs))
				batch := make([]*entry, len(msgs))
				for i, m := range msgs {
					batch[i] = &entry{stream: s, msg: m}
				}
				if err := c.process(ctx, batch); err != nil {
					return err
				}
			}
			if next == "0-0" || next == "" {
				break
			}
			start = next
		}
	}
	return nil
}
