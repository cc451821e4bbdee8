package inboxredis_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
	inboxredis "github.com/pginbox/inbox/adapters/redis"
	"github.com/pginbox/inbox/broker"
	"github.com/pginbox/inbox/internal/testenv"
)

// childEnv, when set, makes the test binary a crash-test child: a
// Consumer that stores its first batch and hangs before acknowledging it,
// until it is killed.
const childEnv = "INBOXREDIS_CRASH_CHILD"

// runChild is the crash-test child's whole life. It returns only on error.
func runChild(spec string) error {
	var s childSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		return err
	}
	cfg, err := pgxpool.ParseConfig(s.URL)
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = s.Schema
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	ib, err := inbox.New(pool, registry(newRuns(), "order")) // stores only: not started
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	c, err := inboxredis.New(rdb, ib.Client(), inboxredis.Options{
		Group: s.Group, Consumer: s.Consumer, Streams: map[string]string{s.Stream: "order"},
	})
	if err != nil {
		return err
	}
	inboxredis.SetAfterSet(c, func() {
		fmt.Println("committed")
		time.Sleep(time.Hour) // until SIGKILL, between the commit and the ack
	})
	return c.Run(context.Background())
}

// A consumer killed between the commit and the acknowledgement leaves its
// batch pending; another consumer of the group takes it over once idle,
// and every event is stored and handled exactly once.
//
// With "restart", the consumer comes back under the killed one's name and
// re-reads its own pending entries instead.
func TestKilledConsumer(t *testing.T) {
	t.Parallel()
	t.Run("takeover", func(t *testing.T) { t.Parallel(); killedConsumer(t, "rescuer") })
	t.Run("restart", func(t *testing.T) { t.Parallel(); killedConsumer(t, "victim") })
}

func killedConsumer(t *testing.T, next string) {
	rdb, prefix := newRedis(t)
	schema, pool := database(t)
	stream, group := prefix+"orders", prefix+"g"
	const n = 300
	var es []map[string]any
	for i := range n {
		es = append(es, map[string]any{"payload": fmt.Sprint(i)})
	}
	entryIDs := add(t, rdb, stream, es)

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+childSpec{
		URL: testenv.URL(), Schema: schema, Stream: stream, Group: group, Consumer: "victim",
	}.String())
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	err := testenv.Poll(30*time.Second, func() (bool, error) {
		select {
		case err := <-exited:
			return false, fmt.Errorf("child exited early: %v\n%s", err, out.String())
		default:
		}
		got, err := stored(pool)
		return got == inboxredis.DefaultBatchSize, err
	})
	if err != nil {
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("child did not commit its first batch: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("child exit = %v, want killed\n%s", err, out.String())
	}
	p, err := rdb.XPending(context.Background(), stream, group).Result()
	if err != nil || p.Consumers["victim"] != inboxredis.DefaultBatchSize {
		t.Fatalf("after the kill: pending %+v (%v); want the victim's committed batch of %d pending",
			p, err, inboxredis.DefaultBatchSize)
	}

	r := newRuns()
	ib := testenv.Start(t, context.Background(), pool, registry(r, "order"), testenv.Fast(t)...)
	o := fast(t, group, next, map[string]string{stream: "order"})
	o.ClaimIdle = 300 * time.Millisecond
	wantClaimed := int64(inboxredis.DefaultBatchSize)
	if next == "victim" {
		o.ClaimIdle = time.Hour // it must find its entries by itself
		wantClaimed = 0
	}
	c, err := inboxredis.New(rdb, ib.Client(), o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	testenv.Eventually(t, 30*time.Second, "every event handled, nothing pending", func() (bool, error) {
		cs, err := ib.Counts(context.Background())
		if err != nil || cs[inbox.Done] != 2*n {
			return false, err
		}
		p, err := pending(rdb, stream, group)
		return p == 0, err
	})
	if got, err := stored(pool); err != nil || got != n {
		t.Fatalf("stored %d events (%v), want %d", got, err, n)
	}
	if got, err := seen(pool); err != nil || got != n {
		t.Fatalf("TxHandler wrote %d rows (%v), want %d", got, err, n)
	}
	counts, _ := r.snapshot()
	for i, eid := range entryIDs {
		if id := broker.ID("redis", stream, eid); counts[id] != 1 {
			t.Fatalf("entry %d ran %d times, want once", i, counts[id])
		}
	}
	s := c.Stats()
	if s.Claimed != wantClaimed || s.Duplicates != inboxredis.DefaultBatchSize ||
		s.Stored != n-inboxredis.DefaultBatchSize || s.Acked != n {
		t.Fatalf("%s's stats %+v; want %d claimed, the victim's %d entries found stored, the other %d stored, all %d acked",
			next, s, wantClaimed, inboxredis.DefaultBatchSize, n-inboxredis.DefaultBatchSize, n)
	}
}
