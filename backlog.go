package inbox

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Backpressure ([WithMaxBacklog]): the Client keeps, per limited event
// type, a figure of its backlog (rows not finished), read from the
// table's counters now and then and increased by the rows of every Set it
// lets through. A Set of a limited type whose figure is at or over the
// limit is refused before anything is written.

const (
	// backlogRefresh is how old the figure may get before a Set reads the
	// counters again. Within one Client the bound does not depend on it
	// (the figure counts the Client's own Sets as they pass); it bounds
	// how late Sets through other Clients are seen while the figure is
	// under the limit (at the limit, backlogRecheck does). A reading costs 0.05 to 0.35 ms of
	// one connection (measured: folded counters, and 1,000 unfolded
	// deltas; a fold of 1,000 deltas 1.8 ms), so a shorter interval would
	// be affordable for one Client, but readings multiply with Clients: at
	// 500 ms, a hundred Clients on one table read 200 times a second.
	backlogRefresh = 500 * time.Millisecond
	// backlogRecheck is how old the figure may be when a Set finds it at
	// or over the limit before that Set reads the counters again: Sets
	// pass again within about 50 ms after the workers brought the backlog
	// under the limit, and while the backlog stays at the limit a Client
	// reads at most 20 times a second.
	backlogRecheck = 50 * time.Millisecond
	// backlogRefreshTimeout bounds one reading; a reading that takes
	// longer counts as failed (the Set goes ahead unchecked).
	backlogRefreshTimeout = 2 * time.Second
	// backlogFoldAbove is how many unfolded delta rows a reading may see
	// before it folds them into the counters (as Stats and the workers
	// do), so that readings stay cheap in a process that only stores
	// events, with no worker folding and no one calling Stats.
	backlogFoldAbove = 1000
)

// backlogLimit is one WithMaxBacklog option: n rows for eventTypes, or for
// every registered event type when eventTypes is empty.
type backlogLimit struct {
	n          int64
	eventTypes []string
}

// backlog is the backpressure state of a Client. nil means no event type
// is limited.
type backlog struct {
	db db
	// types are the limited event types, in the order of their index.
	types []string
	// byType finds the figure of a limited event type.
	byType map[string]*typeBacklog

	// read is the latest reading of the counters, nil before the first.
	read atomic.Pointer[backlogReading]
	// reader is held by the one caller reading the counters.
	reader chan struct{}
	// failing says the latest reading failed. Guarded by reader.
	failing bool

	// mu guards the figures of every typeBacklog.
	mu sync.Mutex
}

// backlogReading is when the counters were last read, and whether that
// worked.
type backlogReading struct {
	at time.Time
	ok bool
}

// typeBacklog is the figure of one limited event type.
type typeBacklog struct {
	eventType string
	index     int
	limit     int64
	// rows is how many rows one record of the type stores: its handler
	// keys.
	rows int64
	// figure is the backlog as last read, plus the rows passed since.
	// Guarded by backlog.mu.
	figure int64
	// passed counts the rows of every Set let through, ever. Guarded by
	// backlog.mu.
	passed int64
}

// newBacklog resolves the WithMaxBacklog options against the registry:
// later options override earlier ones per event type. It returns nil
// when none was given.
func newBacklog(cfg *config, rt *routes, d db) (*backlog, error) {
	if len(cfg.backlogLimits) == 0 {
		return nil, nil
	}
	limits := make(map[string]int64)
	for _, l := range cfg.backlogLimits {
		if len(l.eventTypes) == 0 {
			for _, t := range rt.eventTypes {
				limits[t] = l.n
			}
			continue
		}
		for _, t := range l.eventTypes {
			if _, ok := rt.byType[t]; !ok {
				return nil, invalid("WithMaxBacklog", fmt.Sprintf("%d, %q", l.n, t),
					fmt.Sprintf("no handler is registered for event type %q; register one, or leave the type out", t))
			}
			limits[t] = l.n
		}
	}
	b := &backlog{db: d, byType: make(map[string]*typeBacklog, len(limits)), reader: make(chan struct{}, 1)}
	for _, t := range rt.eventTypes { // sorted: a stable index
		if n, ok := limits[t]; ok {
			b.byType[t] = &typeBacklog{eventType: t, index: len(b.types), limit: n, rows: int64(len(rt.byType[t]))}
			b.types = append(b.types, t)
		}
	}
	return b, nil
}

// backlogNeed is the rows a Set stores of one limited event type.
type backlogNeed struct {
	tb   *typeBacklog
	rows int64
}

// backpressure refuses a checked Set, before it writes anything, when
// the backlog of one of its records' event types is at or over its
// limit; otherwise it adds the Set's rows to the figures. A Set of
// unlimited types only pays a map lookup per record.
func (c *Client) backpressure(ctx context.Context, records []*Record) error {
	b := c.backlog
	if b == nil {
		return nil
	}
	var buf [4]backlogNeed
	need := buf[:0]
	for _, r := range records {
		tb := b.byType[r.eventType]
		if tb == nil {
			continue
		}
		i := 0
		for i < len(need) && need[i].tb != tb {
			i++
		}
		if i == len(need) {
			need = append(need, backlogNeed{tb: tb})
		}
		need[i].rows += tb.rows
	}
	if len(need) == 0 {
		return nil
	}
	b.refresh(ctx, c, backlogRefresh)
	full := b.admit(need)
	if full != nil && b.stale(backlogRecheck) {
		// The figure says full: read it again if it is old enough, so
		// that Sets pass again soon after the workers caught up.
		b.refresh(ctx, c, backlogRecheck)
		full = b.admit(need)
	}
	if full == nil {
		return nil
	}
	c.logger.Debug("inbox: set refused: backlog full", "event_type", full.EventType,
		"backlog", full.Backlog, "limit", full.Limit, "records", len(records))
	return full
}

// admit adds the rows of need to the figures and returns nil, unless the
// figure of one of the types is at or over its limit: it then returns the
// error for the first. While the latest reading failed, it admits
// everything.
func (b *backlog) admit(need []backlogNeed) *BacklogFullError {
	read := b.read.Load()
	b.mu.Lock()
	defer b.mu.Unlock()
	if read != nil && read.ok {
		for _, n := range need {
			if n.tb.figure >= n.tb.limit {
				return &BacklogFullError{EventType: n.tb.eventType, Backlog: n.tb.figure, Limit: n.tb.limit}
			}
		}
	}
	for _, n := range need {
		n.tb.figure += n.rows
		n.tb.passed += n.rows
	}
	return nil
}

// stale reports whether the latest reading is at least maxAge old.
func (b *backlog) stale(maxAge time.Duration) bool {
	last := b.read.Load()
	return last == nil || time.Since(last.at) >= maxAge
}

// refresh reads the counters if the latest reading is at least maxAge
// old, unless another caller is reading them: the caller then uses the
// figure as it is. Before the first reading, callers wait for it (or for
// ctx).
func (b *backlog) refresh(ctx context.Context, c *Client, maxAge time.Duration) {
	last := b.read.Load()
	if last != nil && time.Since(last.at) < maxAge {
		return
	}
	if last == nil {
		select {
		case b.reader <- struct{}{}:
		case <-ctx.Done():
			return // the Set fails on ctx
		}
	} else {
		select {
		case b.reader <- struct{}{}:
		default:
			return
		}
	}
	defer func() { <-b.reader }()
	if !b.stale(maxAge) {
		return // read while this caller waited
	}
	started := time.Now()
	// The rows passed from now on are added to what is read: the reading
	// sees at most the Sets committed before it, and misses those still
	// running now.
	passed := make([]int64, len(b.types))
	b.mu.Lock()
	for _, tb := range b.byType {
		passed[tb.index] = tb.passed
	}
	b.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, backlogRefreshTimeout)
	defer cancel()
	counts, deltas, err := b.readCounters(rctx)
	if err != nil {
		if ctx.Err() != nil {
			return // the caller gave up, not the counters; the next Set reads again
		}
		b.read.Store(&backlogReading{at: started, ok: false})
		if !b.failing {
			c.logger.Warn("inbox: cannot read the backlog for WithMaxBacklog; Sets go ahead unchecked until it can be read again",
				"event_types", b.types, "error", err)
		}
		b.failing = true
		return
	}
	b.mu.Lock()
	for _, tb := range b.byType {
		tb.figure = counts[tb.eventType] + tb.passed - passed[tb.index]
	}
	b.mu.Unlock()
	b.read.Store(&backlogReading{at: started, ok: true})
	if b.failing {
		c.logger.Info("inbox: the backlog for WithMaxBacklog can be read again; Sets are checked")
		b.failing = false
	}
	if deltas > backlogFoldAbove {
		// Fold for the next reading; a fold that fails, or that another
		// fold holds off, leaves the deltas to be read as they are.
		if err := foldCounts(rctx, b.db); err != nil && rctx.Err() == nil {
			c.logger.Debug("inbox: fold the table's counters for WithMaxBacklog", "error", err)
		}
	}
}

// readCounters returns the rows not finished of each limited event type
// (absent: none), and how many unfolded delta rows there were.
func (b *backlog) readCounters(ctx context.Context) (map[string]int64, int64, error) {
	rows, err := b.db.query(ctx, backlogSQL, b.types)
	if err != nil {
		return nil, 0, err
	}
	counts := make(map[string]int64, len(b.types))
	var deltas int64
	var t *string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&t, &n}, func() error {
		if t == nil {
			deltas = n
		} else {
			counts[*t] = n
		}
		return nil
	})
	return counts, deltas, err
}
