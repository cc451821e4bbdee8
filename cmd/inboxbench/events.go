package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// Every benchmark event has this type and, but in Burst, one handler, so
// one row.
const (
	eventType   = "bench.created"
	handlerKey  = "noop"
	payloadSize = 64
	setBatch    = 1_000
)

// payload is a 64-byte body starting with the event's sequence number, so
// handlers can tell events apart without parsing.
func payload(seq int) []byte {
	p := make([]byte, payloadSize)
	binary.BigEndian.PutUint64(p, uint64(seq))
	for i := 8; i < len(p); i++ {
		p[i] = 'x'
	}
	return p
}

func seqOf(p []byte) int {
	if len(p) < 8 {
		return -1
	}
	return int(binary.BigEndian.Uint64(p))
}

// records returns n records with random ids and sequence numbers from
// start.
func records(start, n int) []*inbox.Record {
	recs := make([]*inbox.Record, n)
	now := time.Now()
	for i := range recs {
		r, err := inbox.NewRecord(uuid.New(), eventType, payload(start+i), now)
		if err != nil {
			panic(err) // the arguments are valid by construction
		}
		recs[i] = r
	}
	return recs
}

// newInbox returns an Inbox on pool with the default options, a quiet
// logger and hs as the handlers of the event type.
func (b *bench) newInbox(pool *pgxpool.Pool, hs ...inbox.Handler) (*inbox.Inbox, error) {
	reg := inbox.NewRegistry()
	reg.On(eventType, hs...)
	return inbox.New(pool, reg, append([]inbox.Option{inbox.WithLogger(b.log)}, b.libOpts...)...)
}

// noop is a handler that does nothing.
var noop = inbox.HandlerFunc(handlerKey, func(context.Context, []byte) error { return nil })

// noops returns a no-op handler for each key.
func noops(keys []string) []inbox.Handler {
	hs := make([]inbox.Handler, len(keys))
	for i, k := range keys {
		hs[i] = inbox.HandlerFunc(k, func(context.Context, []byte) error { return nil })
	}
	return hs
}

// libSet stores n events with the library's Set in batches of 1,000 into
// pool's table, with a handler registered for each of keys (handlerKey if
// none), and returns the time spent inside Set (record generation is not
// timed).
func (b *bench) libSet(ctx context.Context, pool *pgxpool.Pool, n int, keys ...string) (time.Duration, error) {
	ib, err := b.newInbox(pool, noops(orDefaultKey(keys))...)
	if err != nil {
		return 0, err
	}
	c := ib.Client()
	var took time.Duration
	for start := 0; start < n; start += setBatch {
		recs := records(start, min(setBatch, n-start))
		t := time.Now()
		if err := c.Set(ctx, recs...); err != nil {
			return 0, err
		}
		took += time.Since(t)
	}
	return took, nil
}

func orDefaultKey(keys []string) []string {
	if len(keys) == 0 {
		return []string{handlerKey}
	}
	return keys
}

// counter is a no-op handler that counts its calls and closes done at the
// target.
type counter struct {
	n      atomic.Int64
	target int64
	done   chan struct{}
}

func newCounter(target int) *counter {
	return &counter{target: int64(target), done: make(chan struct{})}
}

// handler returns a counting no-op handler with key handlerKey.
func (c *counter) handler() inbox.Handler { return c.handlers([]string{handlerKey})[0] }

// handlers returns a counting no-op handler for each key, all counting
// into c.
func (c *counter) handlers(keys []string) []inbox.Handler {
	hs := make([]inbox.Handler, len(keys))
	for i, k := range keys {
		hs[i] = inbox.HandlerFunc(k, c.count)
	}
	return hs
}

func (c *counter) count(context.Context, []byte) error {
	if c.n.Add(1) == c.target {
		close(c.done)
	}
	return nil
}

// wait waits until the handler ran target times, failing if no handler
// ran for stall.
func (c *counter) wait(ctx context.Context, stall time.Duration) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, lastAt := c.n.Load(), time.Now()
	for {
		select {
		case <-c.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if n := c.n.Load(); n != last {
				last, lastAt = n, time.Now()
			} else if time.Since(lastAt) > stall {
				return fmt.Errorf("stalled: %d of %d handler runs, none in the last %v", n, c.target, stall)
			}
		}
	}
}

// unfinishedSQL is true while a row is still to be processed or running.
const unfinishedSQL = `SELECT EXISTS (SELECT 1 FROM inbox_records WHERE status IN ('', 'failed', 'progress'))`

// waitFinished polls until every row of pool's table is done or dead.
func waitFinished(ctx context.Context, pool *pgxpool.Pool, every, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		var busy bool
		if err := pool.QueryRow(ctx, unfinishedSQL).Scan(&busy); err != nil {
			return err
		}
		if !busy {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("rows still unfinished after " + within.String())
		}
		select {
		case <-time.After(every):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// libDrain starts an Inbox with a counting no-op handler for each of keys
// (handlerKey if none) on pool's table holding n due events and returns
// the time from Start until every row is done.
func (b *bench) libDrain(ctx context.Context, pool *pgxpool.Pool, n int, keys ...string) (time.Duration, error) {
	keys = orDefaultKey(keys)
	c := newCounter(n * len(keys))
	ib, err := b.newInbox(pool, c.handlers(keys)...)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := ib.Start(ctx); err != nil {
		return 0, err
	}
	defer stopInbox(ib)
	if err := c.wait(ctx, 30*time.Second); err != nil {
		return 0, err
	}
	if err := waitFinished(ctx, pool, time.Millisecond, 30*time.Second); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

func stopInbox(ib *inbox.Inbox) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = ib.Stop(ctx)
}

// tally returns the number of done rows and the sum of attempts.
func tally(ctx context.Context, pool *pgxpool.Pool) (done, attempts int64, err error) {
	err = pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'done'), coalesce(sum(attempts), 0) FROM inbox_records`).
		Scan(&done, &attempts)
	return done, attempts, err
}

// waitListening waits until a worker's LISTEN connection on the library's
// table is up, then lets the worker's start-up claim pass.
func (b *bench) waitListening(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		err := b.lib.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN %'`).Scan(&n)
		if err != nil {
			return err
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the worker's LISTEN connection did not appear within 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	return nil
}
