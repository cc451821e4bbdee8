package inboxredis_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
	inboxredis "github.com/pginbox/inbox/adapters/redis"
	"github.com/pginbox/inbox/internal/testenv"
)

// A Run whose context ends between the commit and the acknowledgement
// still acknowledges the batch it committed, then returns.
func TestStopFinishesBatchInHand(t *testing.T) {
	t.Parallel()
	rdb, prefix := newRedis(t)
	_, pool := database(t)
	ctx, cancel := context.WithCancel(context.Background())
	var sets atomic.Int32
	ib, err := inbox.New(pool, registry(newRuns(), "order"), inbox.WithHooks(inbox.Hooks{
		OnSet: func(_ context.Context, e inbox.SetEvent) { // after the commit, before the acknowledgement
			if e.Err == nil {
				sets.Add(1)
				cancel()
			}
		}}))
	if err != nil {
		t.Fatal(err)
	}
	stream, group := prefix+"orders", prefix+"g"
	var es []map[string]any
	for i := range 30 {
		es = append(es, map[string]any{"payload": fmt.Sprint(i)})
	}
	add(t, rdb, stream, es)
	c, err := inboxredis.New(rdb, ib.Client(), fast(t, group, "c1", map[string]string{stream: "order"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, err := stored(pool); err != nil || got != 30 || sets.Load() != 1 {
		t.Fatalf("stored %d (%v) in %d Sets, want 30 in one", got, err, sets.Load())
	}
	if p, err := pending(rdb, stream, group); err != nil || p != 0 {
		t.Fatalf("pending = %d (%v) after the stop; the committed batch must be acknowledged", p, err)
	}
}

// Run refuses to run twice at once.
func TestRunTwice(t *testing.T) {
	t.Parallel()
	rdb, prefix := newRedis(t)
	_, pool := database(t)
	ib, err := inbox.New(pool, registry(newRuns(), "order"))
	if err != nil {
		t.Fatal(err)
	}
	stream := prefix + "orders"
	c, err := inboxredis.New(rdb, ib.Client(), fast(t, prefix+"g", "c1", map[string]string{stream: "order"}))
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	testenv.Eventually(t, 10*time.Second, "the group created", func() (bool, error) {
		groups, err := rdb.XInfoGroups(context.Background(), stream).Result()
		return err == nil && len(groups) == 1, nil
	})
	if err := c.Run(context.Background()); !errors.Is(err, inboxredis.ErrRunning) {
		t.Fatalf("second Run = %v, want ErrRunning", err)
	}
}

// Under RejectConflicting, an entry whose id was stored with another
// payload is dead-lettered; the rest of its batch is stored.
func TestConflictDeadLettered(t *testing.T) {
	t.Parallel()
	rdb, prefix := newRedis(t)
	_, pool := database(t)
	ib, err := inbox.New(pool, registry(newRuns(), "order"), inbox.WithConflictingDuplicates(inbox.RejectConflicting))
	if err != nil {
		t.Fatal(err)
	}
	reused := uuid.New()
	if err := ib.Client().Set(context.Background(), testenv.Record(t, reused, "order", "first")); err != nil {
		t.Fatal(err)
	}
	stream, group := prefix+"orders", prefix+"g"
	var es []map[string]any
	for i := range 10 {
		es = append(es, map[string]any{"id": uuid.NewString(), "payload": fmt.Sprint(i)})
	}
	es[4] = map[string]any{"id": reused.String(), "payload": "second"}
	ids := add(t, rdb, stream, es)
	o := fast(t, group, "c1", map[string]string{stream: "order"})
	o.IDField = "id"
	c, err := inboxredis.New(rdb, ib.Client(), o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	testenv.Eventually(t, 10*time.Second, "every entry acknowledged, nothing pending", func() (bool, error) {
		if c.Stats().Acked != 10 {
			return false, nil
		}
		p, err := pending(rdb, stream, group)
		return p == 0, err
	})
	if got, err := stored(pool); err != nil || got != 10 {
		t.Fatalf("stored %d events (%v), want 10: 9 new and the first version", got, err)
	}
	dead, err := rdb.XRange(context.Background(), stream+".dead", "-", "+").Result()
	if err != nil || len(dead) != 1 || dead[0].Values[inboxredis.DeadIDField] != ids[4] ||
		!strings.Contains(dead[0].Values[inboxredis.DeadReasonField].(string), "conflicting") {
		t.Fatalf("dead letters %v (%v); want entry %s as a conflict", dead, err, ids[4])
	}
}

// A stream deleted while the Consumer runs (its group with it) is
// created again with the group, and the entries added since are stored.
func TestStreamDeletedWhileRunning(t *testing.T) {
	t.Parallel()
	rdb, prefix := newRedis(t)
	_, pool := database(t)
	ib, err := inbox.New(pool, registry(newRuns(), "order"))
	if err != nil {
		t.Fatal(err)
	}
	stream, group := prefix+"orders", prefix+"g"
	add(t, rdb, stream, []map[string]any{{"payload": "before"}})
	c, err := inboxredis.New(rdb, ib.Client(), fast(t, group, "c1", map[string]string{stream: "order"}))
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	testenv.Eventually(t, 10*time.Second, "the first entry stored", func() (bool, error) {
		n, err := stored(pool)
		return n == 1, err
	})
	if err := rdb.Del(context.Background(), stream).Err(); err != nil {
		t.Fatal(err)
	}
	add(t, rdb, stream, []map[string]any{{"payload": "after 1"}, {"payload": "after 2"}})
	testenv.Eventually(t, 10*time.Second, "the entries added after the deletion stored", func() (bool, error) {
		n, err := stored(pool)
		return n == 3, err
	})
}

// While Redis is unreachable Run backs off and retries, and returns nil
// once its context ends.
func TestRedisUnreachable(t *testing.T) {
	t.Parallel()
	_, pool := database(t)
	ib, err := inbox.New(pool, registry(newRuns(), "order"))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	c, err := inboxredis.New(rdb, ib.Client(), fast(t, "g", "c1", map[string]string{"s": "order"}))
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	testenv.Eventually(t, 10*time.Second, "several failures", func() (bool, error) {
		return c.Stats().Failures >= 3, nil
	})
	stop()
}

// Under SkipUnknown, entries of event types with no handler are skipped by
// Set, counted and acknowledged, not dead-lettered.
func TestSkipUnknown(t *testing.T) {
	t.Parallel()
	rdb, prefix := newRedis(t)
	_, pool := database(t)
	ib, err := inbox.New(pool, registry(newRuns(), "order"), inbox.WithUnknownEventTypes(inbox.SkipUnknown))
	if err != nil {
		t.Fatal(err)
	}
	stream, group := prefix+"events", prefix+"g"
	add(t, rdb, stream, []map[string]any{
		{"type": "order", "payload": "1"}, {"type": "other", "payload": "2"}, {"type": "order", "payload": "3"},
	})
	o := fast(t, group, "c1", map[string]string{stream: ""})
	o.TypeField = "type"
	c, err := inboxredis.New(rdb, ib.Client(), o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	testenv.Eventually(t, 10*time.Second, "every entry acknowledged", func() (bool, error) {
		return c.Stats().Acked == 3, nil
	})
	if s := c.Stats(); s.Stored != 2 || s.Skipped != 1 || s.DeadLettered != 0 {
		t.Fatalf("stats %+v; want 2 stored, 1 skipped, none dead-lettered", s)
	}
	if n, err := rdb.Exists(context.Background(), stream+".dead").Result(); err != nil || n != 0 {
		t.Fatalf("dead-letter stream exists: %d (%v)", n, err)
	}
}
