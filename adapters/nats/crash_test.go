package inboxnats_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pginbox/inbox"
	inboxnats "github.com/pginbox/inbox/adapters/nats"
	"github.com/pginbox/inbox/broker"
	"github.com/pginbox/inbox/internal/testenv"
)

// childEnv, when set to the JSON of a childSpec, makes the test binary a
// crash-test child (see runChild).
const childEnv = "INBOXNATS_CRASH_CHILD"

// crashBatch is the batch size of the crash test's consumers.
const crashBatch = 100

// childSpec tells a crash-test child where to consume from and store to.
type childSpec struct {
	URL, Schema, Stream, Durable string
	// HangAt is the child's testenv.HangAfterSet argument.
	HangAt int
}

// crashOptions are the options of the crash test's consumers: the
// shortest ack wait, so that the deliveries of a killed child come back
// within a second.
func crashOptions(stream, durable string) inboxnats.Options {
	return inboxnats.Options{
		Stream: stream, Durable: durable, IDHeader: "Event-Id",
		BatchSize: crashBatch, FetchWait: 100 * time.Millisecond, AckWait: inboxnats.MinAckWait,
		Types: map[string]string{stream + ".order": "order"},
	}
}

// effectRegistry registers for "order" one TxHandler, "effect", which
// inserts the event id into the table effects in the transaction that
// marks its row done. The children register it too, so that their Sets
// store the same rows (one per event) as the final consumer.
func effectRegistry() *inbox.Registry {
	reg := inbox.NewRegistry()
	reg.On("order", inbox.TxHandlerFunc("effect", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
		a, _ := inbox.AttemptFromContext(ctx)
		_, err := tx.Exec(ctx, `INSERT INTO effects (event_id) VALUES ($1)`, a.EventID)
		return err
	}))
	return reg
}

// runChild is a crash-test child's life: a Consumer storing through an
// inbox (not started) with testenv.HangAfterSet(spec.HangAt), until it is
// killed. It returns only on error.
func runChild(spec childSpec) error {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(spec.URL)
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = spec.Schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	ib, err := inbox.New(pool, effectRegistry(), testenv.HangAfterSet(spec.HangAt))
	if err != nil {
		return err
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	c, err := inboxnats.New(ctx, js, ib.Client(), crashOptions(spec.Stream, spec.Durable))
	if err != nil {
		return err
	}
	if err := c.Run(ctx); err != nil {
		return err
	}
	return errors.New("Run returned")
}

// Consumer processes SIGKILLed again and again, in turns inside a Set
// (before its commit) and holding a committed batch (before its acks),
// lose nothing and store nothing twice: after each kill the broker counts
// no more messages acked than events stored, a killed Set left no row and
// a committed batch was not acked; a consumer started afterwards finishes
// the stream with every event stored once, its handler's effect written
// once per event, and nothing pending or unacked on the broker.
func TestKilledRepeatedly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.pool.Exec(context.Background(), `CREATE TABLE effects (event_id uuid NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	total, rounds := testenv.KillSize()
	msgs, ids := make([]*nats.Msg, total), make([]uuid.UUID, total)
	for i := range msgs {
		ids[i] = uuid.New()
		msgs[i] = e.msg("order", ids[i].String(), fmt.Sprint("p", i))
	}
	e.publish(msgs...)

	kr := testenv.KillRounds{
		Pool:   e.pool,
		Total:  total,
		Rounds: rounds,
		Start: func(t testing.TB, _, hangAt int) *testenv.Child {
			return testenv.StartChild(t, childEnv, childSpec{
				URL: testenv.URL(), Schema: e.schema, Stream: e.stream, Durable: e.durable, HangAt: hangAt,
			})
		},
		// JetStream counts a killed child's deliveries as ack pending
		// until their ack wait ends, then redelivers them: either way
		// they are unacked.
		Unacked: func() (int, error) {
			info, err := e.consumerInfo()
			if err != nil {
				return 0, err
			}
			return int(info.NumPending) + info.NumAckPending, nil
		},
	}
	kr.Run(t)

	ib := testenv.Start(t, context.Background(), e.pool, effectRegistry(), testenv.Fast(t, exactLease)...)
	o := crashOptions(e.stream, e.durable)
	o.Logger = testenv.Logger(t)
	c := e.consumer(ib.Client(), o)
	testenv.Eventually(t, 3*time.Minute, "every event done", func() (bool, error) {
		counts, err := ib.Counts(context.Background())
		return counts[inbox.Done] == total, err
	})
	e.settled(time.Minute)
	testenv.StoredOnce(t, e.pool, ids, 1)
	var effects, effected int
	err := e.pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT event_id) FROM effects`).Scan(&effects, &effected)
	if err != nil {
		t.Fatal(err)
	}
	if effects != total || effected != total {
		t.Fatalf("%d effects of %d events: want %d of each", effects, effected, total)
	}
	t.Logf("%d events stored and handled once each after %d kills; the last consumer: %+v", total, rounds, c.Stats())
}

// brokerID is the id of the message at stream sequence seq.
func brokerID(stream string, seq uint64) uuid.UUID {
	return broker.ID("jetstream", stream, strconv.FormatUint(seq, 10))
}
