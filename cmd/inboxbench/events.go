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

// Every benchmark event has this type and one handler, so one row.
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
// logger and h as the only handler.
func (b *bench) newInbox(pool *pgxpool.Pool, h inbox.Handler, opts ...inbox.Option) (*inbox.Inbox, error) {
	reg := inbox.NewRegistry()
	reg.On(eventType, h)
	return inbox.New(pool, reg, append([]inbox.Option{inbox.WithLogger(b.log)}, opts...)...)
}

// noop is a handler that does nothing.
var noop = inbox.HandlerFunc(handlerKey, func(context.Context, []byte) error { return nil })

// libSet stores n events with the library's Set in batches of 1,000 and
// returns the time spent inside Set (record generation is not timed).
func (b *bench) libSet(ctx context.Context, n int) (time.Duration, error) {
	ib, err := b.newInbox(b.lib, noop)
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

func (c *counter) handler() inbox.Handler {
	return inbox.HandlerFunc(handlerKey, func(context.Context, []byte) error {
		if c.n.Add(1) == c.target {
			close(c.done)
		}
		return nil
	})
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

// libDrain starts an Inbox with a counting no-op handler on the library's
// table holding n due rows and returns the time from Start until every row
// is done.
func (b *bench) libDrain(ctx context.Context, n int) (time.Duration, error) {
	c := newCounter(n)
	ib, err := b.newInbox(b.lib, c.handler())
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
	if err := waitFinished(ctx, b.lib, time.Millisecond, 30*time.Second); err != nil {
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
