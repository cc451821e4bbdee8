package inboxrabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
	inboxrabbitmq "github.com/pginbox/inbox/adapters/rabbitmq"
	"github.com/pginbox/inbox/internal/testenv"
)

// childEnv, when set, makes the test binary a kill-test child: TestMain
// decodes a childSpec from it and runs runChild instead of the tests.
const childEnv = "INBOX_RABBITMQ_KILL_CHILD"

// childSpec is what a kill-test child consumes, and where it stores.
type childSpec struct {
	DatabaseURL, Schema, AMQPURL, Queue string
	// HangAt is the option testenv.HangAfterSet(HangAt) of its inbox.
	HangAt int
}

// runChild consumes spec.Queue into an inbox that is not started (it only
// stores) and hangs as testenv.HangAfterSet says, until it is killed. It
// returns only when it could not start.
func runChild(spec childSpec) error {
	cfg, err := pgxpool.ParseConfig(spec.DatabaseURL)
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = spec.Schema
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	ib, err := inbox.New(pool, effectsRegistry(), testenv.HangAfterSet(spec.HangAt))
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := inboxrabbitmq.New(inboxrabbitmq.DialURL(spec.AMQPURL), ib.Client(),
		inboxrabbitmq.Options{Queue: spec.Queue, BatchSize: killBatch, Logger: log})
	if err != nil {
		return err
	}
	return c.Run(context.Background())
}

// killBatch is the batch size of the kill test's consumers.
const killBatch = 100

// effectsRegistry has a TxHandler for "order_created" that records each
// run in the table effects, in the transaction that marks its row done:
// a row of effects is a run that took effect.
func effectsRegistry() *inbox.Registry {
	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.TxHandlerFunc("effect", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
		a, _ := inbox.AttemptFromContext(ctx)
		_, err := tx.Exec(ctx, `INSERT INTO effects (event_id) VALUES ($1)`, a.EventID)
		return err
	}))
	return reg
}

// stream returns n messages of type order_created with distinct UUID
// message ids, and those ids.
func stream(n int) ([]amqp.Publishing, []uuid.UUID) {
	msgs, ids := make([]amqp.Publishing, n), make([]uuid.UUID, n)
	for i := range n {
		ids[i] = uuid.New()
		msgs[i] = message("order_created", ids[i].String(), `{"i":`+itoa(i)+`}`)
	}
	return msgs, ids
}

// Consumer processes SIGKILLed again and again, in turns inside a Set
// (before its commit) and between a Set's commit and the acknowledgement,
// lose nothing and store nothing twice: after each kill RabbitMQ counts
// no message acknowledged that is not stored, a Set killed before its
// commit stored nothing, and a committed batch was not acknowledged. A
// consumer started afterwards finishes the stream: every message is
// stored once, each handler took effect once per event, and RabbitMQ has
// no message left, ready or unacknowledged.
//
// 3,000 messages and 6 kills; INBOX_KILL_FULL=1 makes it 10,000 and 12.
func TestKilledRepeatedly(t *testing.T) {
	t.Parallel()
	total, rounds := testenv.KillSize()
	r := newRig(t)
	schema := testenv.Schema(t)
	pool := testenv.SchemaPool(t, schema, 10)
	ctx := context.Background()
	if err := inbox.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE effects (event_id uuid NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	msgs, ids := stream(total)
	r.publish(msgs...)

	kr := testenv.KillRounds{
		Pool:   pool,
		Total:  total,
		Rounds: rounds,
		Start: func(t testing.TB, _, hangAt int) *testenv.Child {
			return testenv.StartChild(t, childEnv, childSpec{
				DatabaseURL: testenv.URL(), Schema: schema, AMQPURL: amqpURL, Queue: r.queue, HangAt: hangAt,
			})
		},
		Unacked: func() (int, error) { return r.unacked(r.queue) },
	}
	kr.Run(t)

	left, err := r.unacked(r.queue)
	if err != nil {
		t.Fatal(err)
	}
	ib := testenv.Start(t, ctx, pool, effectsRegistry(), testenv.Fast(t, exactLease)...)
	c := newConsumer(t, r, inboxrabbitmq.DialURL(amqpURL), ib.Client(), inboxrabbitmq.Options{BatchSize: killBatch})
	stop := run(t, c)
	testenv.Eventually(t, 2*time.Minute, "every message acknowledged and every event handled", func() (bool, error) {
		var done int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_records WHERE status = 'done'`).Scan(&done)
		return done == total && c.Stats().Acked >= int64(left), err
	})
	stop()
	// The consumer's connection is closed: an unacknowledged message
	// would be ready again.
	if n, err := r.unacked(r.queue); err != nil || n != 0 {
		t.Fatalf("%d messages unacknowledged on RabbitMQ (%v), want 0", n, err)
	}
	testenv.StoredOnce(t, pool, ids, 1)
	var effects, distinct int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT event_id) FROM effects`).Scan(&effects, &distinct); err != nil {
		t.Fatal(err)
	}
	if effects != total || distinct != total {
		t.Fatalf("%d handler effects for %d distinct events, want %d for %d", effects, distinct, total, total)
	}
	t.Logf("after %d kills: %d left for the last consumer, which acknowledged %d (%+v); %d events stored once, %d effects",
		rounds, left, c.Stats().Acked, c.Stats(), total, effects)
}

// gatedDialer is a dialRecorder that refuses to dial while shut.
type gatedDialer struct {
	dialRecorder
	shut atomic.Bool
}

func (g *gatedDialer) dial() (*amqp.Connection, error) {
	if g.shut.Load() {
		return nil, errors.New("dialing shut off by the test")
	}
	return g.dialRecorder.dial()
}

// downFor is how long TestPostgresStoppedMidStream keeps PostgreSQL down.
const downFor = 3 * time.Second

// PostgreSQL stopped mid-stream for a few seconds: while it is down the
// consumer acknowledges nothing (its Sets fail and are retried), and
// RabbitMQ counts no more messages acknowledged than were stored when it
// stopped; once it is back every message is stored once and none is left
// on RabbitMQ, ready or unacknowledged.
//
// To read RabbitMQ's exact count at the end of the outage the test cuts
// the consumer's connection, keeps it from dialing until its
// unacknowledged messages are ready again, then lets it reconnect while
// PostgreSQL is still down.
func TestPostgresStoppedMidStream(t *testing.T) {
	t.Parallel()
	const total = 2000
	cluster, pool := testenv.StoppableDatabase(t, 4)
	r := newRig(t)
	msgs, ids := stream(total)
	r.publish(msgs...)
	reg, _ := registry()
	writer, err := inbox.New(pool, reg, inbox.WithLogger(testenv.Logger(t))) // not started: Sets only
	if err != nil {
		t.Fatal(err)
	}
	var d gatedDialer
	var logs testenv.LogLines // a warning per failed Set: kept out of the test's log
	c := newConsumer(t, r, d.dial, writer.Client(), inboxrabbitmq.Options{Logger: logs.Logger()})
	stop := run(t, c)
	testenv.Eventually(t, time.Minute, "a first batch stored", func() (bool, error) {
		return rows(t, pool) >= inboxrabbitmq.DefaultBatchSize, nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cluster.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	before := c.Stats()
	testenv.Hold(t, downFor, "PostgreSQL is down", func() error {
		if s := c.Stats(); s.Acked != before.Acked {
			return fmt.Errorf("%d messages acknowledged while PostgreSQL was down", s.Acked-before.Acked)
		}
		return nil
	})
	if s := c.Stats(); s.SetFailures <= before.SetFailures {
		t.Fatalf("no Set failed while PostgreSQL was down: stats %+v", s)
	}
	// RabbitMQ's count: what is neither ready nor held by a consumer.
	d.shut.Store(true)
	d.cut()
	ready, err := r.unacked(r.queue)
	if err != nil {
		t.Fatal(err)
	}
	acked, cut := total-ready, c.Stats()
	d.shut.Store(false)
	if ready > 0 {
		waitStats(t, c, time.Minute, "a reconnection and failing Sets again", func(s inboxrabbitmq.Stats) bool {
			return s.Connections > cut.Connections && s.SetFailures > cut.SetFailures
		})
	}
	if err := cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}

	// created_at is its transaction's start: before the restart only for
	// rows committed before the stop.
	var stored int
	err = pool.QueryRow(ctx, `SELECT count(*) FROM inbox_records WHERE created_at < pg_postmaster_start_time()`).Scan(&stored)
	if err != nil {
		t.Fatal(err)
	}
	if acked > stored {
		t.Fatalf("RabbitMQ counts %d messages acknowledged, only %d were stored when PostgreSQL stopped", acked, stored)
	}
	if ready == 0 {
		t.Fatal("the stream was over before PostgreSQL stopped; publish more")
	}
	waitStats(t, c, time.Minute, "every message stored and acknowledged", func(s inboxrabbitmq.Stats) bool {
		return s.Acked >= cut.Acked+int64(ready)
	})
	stop()
	if n, err := r.unacked(r.queue); err != nil || n != 0 {
		t.Fatalf("%d messages unacknowledged on RabbitMQ (%v), want 0", n, err)
	}
	testenv.StoredOnce(t, pool, ids, 1)
	t.Logf("%d stored and %d acknowledged when PostgreSQL stopped, %d left; stats %+v", stored, acked, ready, c.Stats())
}
