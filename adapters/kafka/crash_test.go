package inboxkafka_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pginbox/inbox"
	inboxkafka "github.com/pginbox/inbox/adapters/kafka"
	"github.com/pginbox/inbox/internal/testenv"
)

// childEnv carries a [childSpec] to this test binary run as a child.
const childEnv = "INBOXKAFKA_CHILD"

// childSpec is what a crash-test child consumes, and where it stores.
type childSpec struct {
	Seeds  []string
	Group  string
	Topic  string
	URL    string // the database of the parent's testenv.Main
	Schema string
	HangAt int // testenv.HangAfterSet's n
}

// crashBatch is the batch size (MaxPollRecords) of the crash tests.
const crashBatch = 100

// crashGroup are fastGroup's options with a short session, so that the
// group gives a killed member's partitions to the next one within seconds.
func crashGroup() []kgo.Opt {
	return append(fastGroup(), kgo.SessionTimeout(2*time.Second))
}

// runChild is a crash-test child: a consumer storing into an inbox that is
// not started, until it is killed. It returns an exit code only when it
// fails.
func runChild(spec childSpec) int {
	ctx := context.Background()
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "child: %v\n", err)
		return 2
	}
	cfg, err := pgxpool.ParseConfig(spec.URL)
	if err != nil {
		return fail(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = spec.Schema
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	ib, err := inbox.New(pool, effectRegistry(spec.Topic), testenv.HangAfterSet(spec.HangAt))
	if err != nil {
		return fail(err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := inboxkafka.New(ib.Client(), inboxkafka.Options{
		Seeds: spec.Seeds, Group: spec.Group, Topics: []string{spec.Topic}, IDHeader: idHeader,
		MaxPollRecords: crashBatch, Logger: logger,
	}, crashGroup()...)
	if err != nil {
		return fail(err)
	}
	if err := c.Run(ctx); err != nil {
		return fail(err)
	}
	return fail(errors.New("Run returned before the kill"))
}

// effectRegistry handles eventType with a TxHandler that writes the
// event's id to the table effects (see withEffects), in the transaction
// that marks the event done: one row per event means it took effect once.
func effectRegistry(eventType string) *inbox.Registry {
	reg := inbox.NewRegistry()
	reg.Handle(eventType, inbox.TxHandlerFunc("effect", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
		a, ok := inbox.AttemptFromContext(ctx)
		if !ok {
			return errors.New("no attempt in context")
		}
		_, err := tx.Exec(ctx, `INSERT INTO effects (event_id) VALUES ($1)`, a.EventID)
		return err
	}))
	return reg
}

const crashTopic = "crashes"

// unacked returns how many of the total messages of topic (all of its
// partitions starting at offset 0) lie past group's committed offsets:
// not yet delivered, or delivered and not committed. Kafka keeps the
// offsets a member committed whether or not that member is still alive,
// so the count needs no wait for the group to notice a killed one.
func unacked(ctx context.Context, adm *kadm.Client, group, topic string, total int) (int, error) {
	got, err := adm.FetchOffsets(ctx, group)
	if err == nil {
		err = got.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("fetch offsets: %w", err)
	}
	n := total
	got.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic && o.At > 0 {
			n -= int(o.At)
		}
	})
	return n, nil
}

// withEffects creates the table effects of effectRegistry in pool's
// schema.
func withEffects(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `CREATE TABLE effects (event_id uuid NOT NULL)`); err != nil {
		t.Fatal(err)
	}
}

// produceEvents produces n events of new ids to topic and returns the ids.
func produceEvents(t testing.TB, seeds []string, topic string, n int) []uuid.UUID {
	t.Helper()
	ids := make([]uuid.UUID, n)
	recs := make([]*kgo.Record, n)
	for i := range ids {
		ids[i] = uuid.New()
		recs[i] = event(topic, ids[i])
	}
	produce(t, seeds, recs)
	return ids
}

// storedOnce waits until effectRegistry's handler has written as many
// effects as there are ids, then fails t unless the inbox holds exactly
// one row per id ([testenv.StoredOnce]), done, and effects holds each id
// exactly once.
func storedOnce(t testing.TB, pool *pgxpool.Pool, ids []uuid.UUID) {
	t.Helper()
	ctx := context.Background()
	total := len(ids)
	testenv.Eventually(t, within, "every effect written", func() (bool, error) {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM effects`).Scan(&n)
		return n >= total, err
	})
	testenv.StoredOnce(t, pool, ids, 1)
	var done int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_records WHERE status = 'done'`).Scan(&done); err != nil {
		t.Fatal(err)
	}
	if done != total {
		t.Fatalf("inbox holds %d events done; want %d", done, total)
	}
	rs, err := pool.Query(ctx, `SELECT event_id FROM effects`)
	if err != nil {
		t.Fatal(err)
	}
	effects, err := pgx.CollectRows(rs, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	byBytes := func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) }
	want := slices.SortedFunc(slices.Values(ids), byBytes)
	slices.SortFunc(effects, byBytes)
	if !slices.Equal(effects, want) {
		t.Fatalf("%d effects written; want one for each of the %d events produced", len(effects), total)
	}
}

// TestKilledRepeatedly: consumers in child processes SIGKILLed again and
// again, in turns inside a Set (before its commit) and holding a stored
// batch (before its offset commit), never leave an offset committed past
// what is stored; a consumer started afterwards stores the rest, so that
// every message is stored exactly once, its TxHandler's effect is written
// exactly once, and the group's committed offsets reach the end of every
// partition. INBOX_KILL_FULL=1 runs the full size.
func TestKilledRepeatedly(t *testing.T) {
	const group = "inbox"
	total, rounds := testenv.KillSize()
	seeds := cluster(t, 4, crashTopic)
	schema := testenv.Schema(t)
	pool := testenv.SchemaPool(t, schema, testenv.PoolMaxConns)
	ctx := context.Background()
	if err := inbox.Migrate(ctx, pool); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	withEffects(t, pool)
	ids := produceEvents(t, seeds, crashTopic, total)
	adm := kadm.NewClient(kafkaClient(t, seeds))
	count := func() (int, error) { return unacked(ctx, adm, group, crashTopic, total) }

	testenv.KillRounds{
		Pool: pool, Total: total, Rounds: rounds,
		Start: func(t testing.TB, _, hangAt int) *testenv.Child {
			return testenv.StartChild(t, childEnv, childSpec{
				Seeds: seeds, Group: group, Topic: crashTopic, URL: testenv.URL(), Schema: schema, HangAt: hangAt,
			})
		},
		Unacked: count,
	}.Run(t)

	ib := testenv.Start(t, ctx, pool, effectRegistry(crashTopic), testenv.Fast(t, exactLease, inbox.WithBatchSize(1000))...)
	c, err := inboxkafka.New(ib.Client(), inboxkafka.Options{
		Seeds: seeds, Group: group, Topics: []string{crashTopic}, IDHeader: idHeader,
		MaxPollRecords: crashBatch, Logger: testenv.Logger(t),
	}, crashGroup()...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	stop := run(t, c)
	testenv.Eventually(t, within, "every offset committed", func() (bool, error) {
		n, err := count()
		return n == 0, err
	})
	storedOnce(t, pool, ids)
	stop()
	if n, err := count(); err != nil || n != 0 {
		t.Fatalf("%d messages unacked (%v) at the end, want 0", n, err)
	}
	t.Logf("after %d kills: %d events stored and handled once each; the last consumer %+v", rounds, total, c.Stats())
}

// TestDatabaseStoppedMidStream: PostgreSQL stopped for three seconds
// while a consumer is storing a stream: no offset is committed past what
// was stored when it stopped, and once it is back every message is stored
// and handled exactly once and the group's offsets reach the end.
func TestDatabaseStoppedMidStream(t *testing.T) {
	const topic, group, n = "ledger", "inbox", 2000
	seeds := cluster(t, 4, topic)
	pg, pool := testenv.StoppableDatabase(t, 8)
	withEffects(t, pool)
	ctx := context.Background()
	ib := testenv.Start(t, ctx, pool, effectRegistry(topic), testenv.Fast(t, exactLease, inbox.WithBatchSize(1000))...)
	ids := produceEvents(t, seeds, topic, n)
	c, err := inboxkafka.New(ib.Client(), inboxkafka.Options{
		Seeds: seeds, Group: group, Topics: []string{topic}, IDHeader: idHeader, MaxPollRecords: crashBatch,
		RetryBackoff: 10 * time.Millisecond, MaxRetryBackoff: 200 * time.Millisecond,
		Logger: testenv.Logger(t),
	}, fastGroup()...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// The third batch, stored, waits before its commit until PostgreSQL is
	// down: the stream is mid-way, whatever the machine's speed.
	paused, resume := make(chan struct{}), make(chan struct{})
	var calls atomic.Int64
	inboxkafka.SetBeforeCommit(c, func() error {
		if calls.Add(1) == 3 {
			close(paused)
			<-resume
		}
		return nil
	})
	run(t, c)
	release := sync.OnceFunc(func() { close(resume) })
	t.Cleanup(release) // before run's cleanup, should the test fail early
	select {
	case <-paused:
	case <-time.After(within):
		t.Fatal("the consumer did not reach its third batch")
	}
	held, err := stored(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	release()

	adm := kadm.NewClient(kafkaClient(t, seeds))
	failures := c.Stats().SetFailures
	// Watch the group's offsets for three seconds of outage.
	testenv.Hold(t, 3*time.Second, "PostgreSQL is down", func() error {
		u, err := unacked(ctx, adm, group, topic, n)
		if err != nil {
			return err
		}
		if acked := n - u; acked > held {
			return fmt.Errorf("%d messages acked, %d stored when it stopped", acked, held)
		}
		return nil
	})
	if got := c.Stats().SetFailures - failures; got == 0 {
		t.Fatal("no Set failed while PostgreSQL was down: the outage tested nothing")
	}
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}

	testenv.Eventually(t, within, "every offset committed", func() (bool, error) {
		u, err := unacked(ctx, adm, group, topic, n)
		return u == 0, err
	})
	storedOnce(t, pool, ids)
	t.Logf("%d stored when PostgreSQL stopped; consumer %+v", held, c.Stats())
}
