package inboxredis_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
	inboxredis "github.com/pginbox/inbox/adapters/redis"
	"github.com/pginbox/inbox/broker"
	"github.com/pginbox/inbox/internal/testenv"
)

// childEnv, when set, makes the test binary a crash-test child: a
// Consumer of the stream whose inbox stores only, built from the
// childSpec in the variable, run until it is killed.
const childEnv = "INBOXREDIS_CRASH_CHILD"

// childSpec is what a crash-test child needs.
type childSpec struct {
	URL, Schema, Stream, Group, Consumer string
	// HangAt is the option testenv.HangAfterSet of the child's inbox.
	HangAt int
}

// runChild is the crash-test child's whole life. It returns only on error.
func runChild(s childSpec) error {
	cfg, err := pgxpool.ParseConfig(s.URL)
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = s.Schema
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	// The inbox stores only: it is not started.
	ib, err := inbox.New(pool, registry(newRuns(), "order"), testenv.HangAfterSet(s.HangAt))
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	c, err := inboxredis.New(rdb, ib.Client(), inboxredis.Options{
		Group: s.Group, Consumer: s.Consumer, Streams: map[string]string{s.Stream: "order"},
		BatchSize: 100, Block: 50 * time.Millisecond,
		ClaimIdle: time.Hour, // a child re-reads its own pending entries, never takes over others'
	})
	if err != nil {
		return err
	}
	return c.Run(context.Background())
}

// unacked returns how many entries of stream the group has not
// acknowledged: those pending with its consumers and those not yet
// delivered (its lag), from one XINFO GROUPS. Before the group exists,
// that is the whole stream.
func unacked(rdb *redis.Client, stream, group string) (int, error) {
	groups, err := rdb.XInfoGroups(context.Background(), stream).Result()
	if err != nil {
		return 0, err
	}
	for _, g := range groups {
		if g.Name != group {
			continue
		}
		if g.Lag < 0 {
			return 0, fmt.Errorf("group %s: Redis cannot tell its lag", group)
		}
		return int(g.Pending + g.Lag), nil
	}
	n, err := rdb.XLen(context.Background(), stream).Result()
	return int(n), err
}

// Consumers in child processes are SIGKILLed again and again, in turns
// inside a Set (before its commit) and holding a committed batch (before
// its XACK); after each kill whatever Redis counts acknowledged is stored,
// a Set killed before its commit left nothing, and a committed batch was
// not acknowledged. Children restart under the name of the one killed
// before them, two times in three, and re-read its pending entries (a
// batch never committed, or one committed and not acknowledged); the
// entries of the others stay pending until a consumer in the test process
// takes them over (XAUTOCLAIM). It then finishes the stream with a started
// inbox: every message stored exactly once, each handler run once per
// event, nothing pending or undelivered.
//
// INBOX_KILL_FULL=1 runs it with 10,000 messages and 12 rounds.
func TestKilledRepeatedly(t *testing.T) {
	t.Parallel()
	total, rounds := testenv.KillSize()
	rdb, prefix := newRedis(t)
	schema, pool := database(t)
	stream, group := prefix+"orders", prefix+"g"
	es := make([]map[string]any, total)
	for i := range es {
		es[i] = map[string]any{"payload": fmt.Sprint(i)} // ids derived from the entries
	}
	entryIDs := add(t, rdb, stream, es)

	kr := testenv.KillRounds{
		Pool: pool, Total: total, Rounds: rounds,
		Start: func(t testing.TB, round, hangAt int) *testenv.Child {
			return testenv.StartChild(t, childEnv, childSpec{
				URL: testenv.URL(), Schema: schema, Stream: stream, Group: group,
				Consumer: fmt.Sprintf("child-%d", round/3), HangAt: hangAt,
			})
		},
		Unacked: func() (int, error) { return unacked(rdb, stream, group) },
	}
	kr.Run(t)

	ctx := context.Background()
	left, err := unacked(rdb, stream, group)
	if err != nil {
		t.Fatal(err)
	}
	before, err := stored(pool)
	if err != nil {
		t.Fatal(err)
	}
	summary, err := rdb.XPending(ctx, stream, group).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Each restart re-read the batch its name had pending: each name has
	// only the batch of its last child pending.
	var orphans int64 // pending with the dead children
	for _, n := range summary.Consumers {
		orphans += n
	}
	if names := (rounds + 2) / 3; len(summary.Consumers) != names || orphans != int64(100*names) {
		t.Fatalf("pending with killed children: %s; want one batch of 100 with each of %d names",
			consumers(summary), names)
	}

	r := newRuns()
	ib := testenv.Start(t, ctx, pool, registry(r, "order"), testenv.Fast(t, exactLease)...)
	o := fast(t, group, "final", map[string]string{stream: "order"})
	o.BatchSize, o.ClaimIdle = 100, 200*time.Millisecond
	c, err := inboxredis.New(rdb, ib.Client(), o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	var (
		cs         map[inbox.Status]int
		unackedNow int
	)
	err = testenv.Poll(3*time.Minute, func() (bool, error) {
		var err error
		if cs, err = ib.Counts(ctx); err != nil {
			return false, err
		}
		unackedNow, err = unacked(rdb, stream, group)
		return cs[inbox.Done] == 2*total && unackedNow == 0, err
	})
	if err != nil {
		t.Fatalf("waiting for every event handled and every entry acknowledged: %v; rows by status %v, "+
			"%d entries unacknowledged, final consumer's stats %+v", err, cs, unackedNow, c.Stats())
	}
	if got, err := stored(pool); err != nil || got != total {
		t.Fatalf("stored %d events (%v), want %d", got, err, total)
	}
	if got, err := seen(pool); err != nil || got != total {
		t.Fatalf("the TxHandler wrote %d rows (%v), want %d", got, err, total)
	}
	counts, _ := r.snapshot()
	if len(counts) != total {
		t.Fatalf("the handler ran for %d events, want %d", len(counts), total)
	}
	for i, eid := range entryIDs {
		if id := broker.ID("redis", stream, eid); counts[id] != 1 {
			t.Fatalf("entry %d (%s) handled %d times, want once", i, eid, counts[id])
		}
	}
	s := c.Stats()
	if s.Claimed != orphans || s.Acked != int64(left) || s.Stored != int64(total-before) ||
		s.Duplicates != int64(left-(total-before)) {
		t.Fatalf("final consumer's stats %+v; want the %d entries pending with killed children claimed, "+
			"the %d unacknowledged acked, the %d missing stored and the other %d found stored",
			s, orphans, left, total-before, left-(total-before))
	}
	t.Logf("after %d rounds: %d of %d stored, %d unacknowledged (%d pending with killed children: %s); "+
		"the final consumer claimed %d, stored %d, found %d stored, acked %d",
		rounds, before, total, left, orphans, consumers(summary), s.Claimed, s.Stored, s.Duplicates, s.Acked)
}

// consumers lists the pending count of each consumer of summary.
func consumers(summary *redis.XPending) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(summary.Consumers)) {
		fmt.Fprintf(&b, " %s=%d", name, summary.Consumers[name])
	}
	return strings.TrimSpace(b.String())
}

// PostgreSQL stopped for three seconds in the middle of a stream: while
// it is down Redis counts no more entries acknowledged than were stored
// when it stopped, and Set keeps failing; once it is back every entry is
// stored exactly once and nothing is left pending or undelivered.
func TestDatabaseStopped(t *testing.T) {
	t.Parallel()
	cluster, pool := testenv.StoppableDatabase(t, 4)
	rdb, prefix := newRedis(t)
	// The third Set waits, committed and not acknowledged, until
	// PostgreSQL is down: the stop falls in the middle of the stream.
	third, down := make(chan struct{}), make(chan struct{})
	sets := 0
	ib, err := inbox.New(pool, registry(newRuns(), "order"), inbox.WithHooks(inbox.Hooks{ // stores only: not started
		OnSet: func(_ context.Context, e inbox.SetEvent) {
			if e.Err != nil {
				return
			}
			if sets++; sets == 3 { // Set hooks of one consumer do not overlap
				close(third)
				<-down
			}
		}}))
	if err != nil {
		t.Fatal(err)
	}
	stream, group := prefix+"orders", prefix+"g"
	const n = 2000
	es := make([]map[string]any, n)
	for i := range es {
		es[i] = map[string]any{"payload": fmt.Sprint(i)}
	}
	entryIDs := add(t, rdb, stream, es)

	o := fast(t, group, "c1", map[string]string{stream: "order"})
	o.BatchSize, o.MaxRetryBackoff = 100, 200*time.Millisecond
	c, err := inboxredis.New(rdb, ib.Client(), o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	var once sync.Once
	release := func() { once.Do(func() { close(down) }) }
	t.Cleanup(release) // before run's: a failed test must not leave the Set waiting
	select {
	case <-third:
	case <-time.After(time.Minute):
		t.Fatal("no third Set within a minute")
	}
	held, err := stored(pool)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := cluster.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	failures := c.Stats().Failures
	release()
	most := 0 // the most entries Redis counted acknowledged while down
	testenv.Hold(t, 3*time.Second, "PostgreSQL is down", func() error {
		left, err := unacked(rdb, stream, group)
		if err != nil {
			return err
		}
		acked := n - left
		if acked > held {
			return fmt.Errorf("%d entries acknowledged while PostgreSQL is down, %d stored when it stopped", acked, held)
		}
		most = max(most, acked)
		return nil
	})
	if f := c.Stats().Failures; f == failures {
		t.Fatal("no Set failed while PostgreSQL was down")
	}
	if err := cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, "every entry acknowledged", func() (bool, error) {
		left, err := unacked(rdb, stream, group)
		return left == 0, err
	})
	ids := make([]uuid.UUID, len(entryIDs))
	for i, eid := range entryIDs {
		ids[i] = broker.ID("redis", stream, eid)
	}
	testenv.StoredOnce(t, pool, ids, 2) // a row for each of registry's 2 handlers
	t.Logf("%d stored when PostgreSQL stopped, at most %d acknowledged while down; %d failures; stats %+v",
		held, most, c.Stats().Failures-failures, c.Stats())
}
