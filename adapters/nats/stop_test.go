package inboxnats_test

import (
	"context"
	"testing"
	"time"

	inboxnats "github.com/pginbox/inbox/adapters/nats"
	"github.com/pginbox/inbox/internal/testenv"
)

// Stopping Run while its Set is blocked (by a lock the test holds):
// released within the ack wait, the batch is committed and then acked
// before Run returns; held past it, the Set is cancelled and nothing is
// acked or stored.
func TestStopFinishesOrLeavesTheBatch(t *testing.T) {
	t.Parallel()
	for _, release := range []bool{true, false} {
		name := map[bool]string{true: "released", false: "held"}[release]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			ctx := context.Background()
			lock, err := e.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Rollback(ctx)
			if _, err := lock.Exec(ctx, `LOCK TABLE inbox_records IN SHARE ROW EXCLUSIVE MODE`); err != nil {
				t.Fatal(err)
			}
			const n = 50
			msgs, _ := orders(e, n)
			e.publish(msgs...)
			c, err := inboxnats.New(ctx, e.js, e.writer(e.pool), e.options(func(o *inboxnats.Options) {
				o.AckWait = 3 * time.Second
				o.Logger = new(testenv.LogLines).Logger()
			}))
			if err != nil {
				t.Fatal(err)
			}
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- c.Run(runCtx) }()
			testenv.Eventually(t, 30*time.Second, "the batch fetched", func() (bool, error) {
				return c.Stats().Fetched == int64(len(msgs)), nil
			})
			stop()
			stopped := time.Now()
			if release {
				select {
				case err := <-done:
					t.Fatalf("Run returned %v while its Set was blocked", err)
				default:
				}
				if err := lock.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run = %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return")
			}
			t.Logf("Run returned %v after its context ended; %+v", time.Since(stopped), c.Stats())
			if !release {
				_ = lock.Rollback(ctx)
			}
			s := c.Stats()
			if release {
				if s.Acked != int64(len(msgs)) || e.rows() != n {
					t.Fatalf("stats %+v, %d rows: want the batch committed and acked", s, e.rows())
				}
				if info := e.info(); info.NumAckPending != 0 || info.NumPending != 0 {
					t.Fatalf("%d unacked, %d pending after the stop", info.NumAckPending, info.NumPending)
				}
				return
			}
			if s.Acked != 0 || e.rows() != 0 {
				t.Fatalf("stats %+v, %d rows: want nothing acked or stored", s, e.rows())
			}
			if info := e.info(); info.AckFloor.Stream != 0 {
				t.Fatalf("ack floor %+v after a stop that stored nothing", info.AckFloor)
			}
		})
	}
}
