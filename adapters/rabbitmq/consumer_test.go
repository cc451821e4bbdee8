package inboxrabbitmq_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
	inboxrabbitmq "github.com/pginbox/inbox/adapters/rabbitmq"
	"github.com/pginbox/inbox/internal/testenv"
)

// newConsumer returns a consumer of r's queue into client.
func newConsumer(t testing.TB, r *rig, dial inboxrabbitmq.Dialer, client *inbox.Client, opts inboxrabbitmq.Options) *inboxrabbitmq.Consumer {
	t.Helper()
	opts.Queue = r.queue
	if opts.Logger == nil {
		opts.Logger = testenv.Logger(t)
	}
	if opts.RetryBackoff == 0 {
		opts.RetryBackoff, opts.MaxRetryBackoff = 5*time.Millisecond, 100*time.Millisecond
	}
	c, err := inboxrabbitmq.New(dial, client, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// 10,000 messages, a tenth of them published twice with the same
// message id: each event is stored once and handled once, and every
// delivery is acknowledged.
func TestStoresEachMessageOnce(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	pool := testenv.MigratedPool(t)
	reg, runs := registry()
	ib := testenv.Start(t, context.Background(), pool, reg, testenv.Fast(t, exactLease)...)

	const n = 10000
	ids := make([]string, n)
	msgs := make([]amqp.Publishing, 0, n+n/10)
	for i := range n {
		ids[i] = uuid.NewString()
		msgs = append(msgs, message("order_created", ids[i], `{"i":`+itoa(i)+`}`))
		if i%10 == 5 { // a redelivery of an earlier message
			msgs = append(msgs, message("order_created", ids[i-5], `{"i":`+itoa(i-5)+`}`))
		}
	}
	r.publish(msgs...)

	c := newConsumer(t, r, inboxrabbitmq.DialURL(amqpURL), ib.Client(), inboxrabbitmq.Options{})
	stop := run(t, c)
	testenv.Eventually(t, 2*time.Minute, "every event handled", func() (bool, error) {
		events, _ := runs.counts()
		return events == n && c.Stats().Acked == int64(len(msgs)), nil
	})
	stop()
	if events, total := runs.counts(); events != n || total != n {
		t.Fatalf("handled %d events in %d runs, want %d in %d", events, total, n, n)
	}
	if twice := runs.twice(); len(twice) > 0 {
		t.Fatalf("%d events handled more than once, e.g. %s", len(twice), twice[0])
	}
	if got := rows(t, pool); got != n {
		t.Fatalf("%d rows stored, want %d", got, n)
	}
	// The consumer's connection is closed: an unacknowledged message
	// would be ready again.
	if got := r.ready(r.queue); got != 0 {
		t.Fatalf("%d messages left in the queue, want 0", got)
	}
	if s := c.Stats(); s.Acked != int64(len(msgs)) || s.Poison != 0 || s.SetFailures != 0 {
		t.Fatalf("stats %+v, want %d acked, no poison, no Set failure", s, len(msgs))
	}
	t.Logf("stats: %+v", c.Stats())
}

// While Set fails (the database unreachable) nothing is acknowledged;
// once it is back every message is stored once. Poison messages (no
// message id; an event type without handler) are dead-lettered, never
// acknowledged.
func TestSetFailureAcksNothing(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	schema := testenv.Schema(t)
	direct := testenv.SchemaPool(t, schema, 4)
	if err := inbox.Migrate(context.Background(), direct); err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, pgTarget(t)) // down: connections are refused
	reg, _ := registry()
	writer, err := inbox.New(proxiedPool(t, p, schema), reg, inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}

	const good, noID, unknown = 250, 7, 3
	var msgs []amqp.Publishing
	for i := range good {
		msgs = append(msgs, message("order_created", uuid.NewString(), `{"i":`+itoa(i)+`}`))
		if i%37 == 0 && i/37 < noID {
			msgs = append(msgs, message("order_created", "", `{"no":"id"}`))
		}
		if i%71 == 3 && i/71 < unknown {
			msgs = append(msgs, message("no_such_type", uuid.NewString(), `{}`))
		}
	}
	r.publish(msgs...)

	c := newConsumer(t, r, inboxrabbitmq.DialURL(amqpURL), writer.Client(), inboxrabbitmq.Options{})
	run(t, c)
	testenv.Eventually(t, time.Minute, "Set to fail a few times", func() (bool, error) {
		return c.Stats().SetFailures >= 5, nil
	})
	if s := c.Stats(); s.Acked != 0 {
		t.Fatalf("%d messages acknowledged while Set failed", s.Acked)
	}
	if got := rows(t, direct); got != 0 {
		t.Fatalf("%d rows stored while the database was unreachable", got)
	}

	p.up.Store(true)
	waitStats(t, c, time.Minute, "every message stored or dead-lettered", func(s inboxrabbitmq.Stats) bool {
		return s.Acked == good && s.Poison == noID+unknown
	})
	if got := rows(t, direct); got != good {
		t.Fatalf("%d rows stored, want %d", got, good)
	}
	testenv.Eventually(t, 10*time.Second, "the poison messages in the dead-letter queue", func() (bool, error) {
		return r.ready(r.dead) == noID+unknown, nil
	})
	if got := r.ready(r.queue); got != 0 {
		t.Fatalf("%d messages ready in the queue, want 0", got)
	}
}

// Records Set refuses (event types without handler) among good ones in
// one batch are dead-lettered, each with its own error, and the rest is
// stored by one more Set: two Sets for the batch.
func TestRefusedRecordsDeadLettered(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	pool := testenv.MigratedPool(t)
	reg, _ := registry()
	var sets testenv.SetCalls
	ib := testenv.Start(t, context.Background(), pool, reg, testenv.Fast(t, exactLease, sets.Option())...) // RejectUnknown

	const n = 40
	unknown := []int{5, 17, 30}
	var msgs []amqp.Publishing
	for i := range n {
		key := "order_created"
		if slices.Contains(unknown, i) {
			key = "no_such_type"
		}
		msgs = append(msgs, message(key, uuid.NewString(), `{"i":`+itoa(i)+`}`))
	}
	r.publish(msgs...)

	var logs testenv.LogLines
	c := newConsumer(t, r, inboxrabbitmq.DialURL(amqpURL), ib.Client(),
		inboxrabbitmq.Options{BatchSize: n, BatchWait: 10 * time.Second, Logger: logs.Logger()})
	run(t, c)
	good := int64(n - len(unknown))
	waitStats(t, c, time.Minute, "the batch stored and its refused records dead-lettered", func(s inboxrabbitmq.Stats) bool {
		return s.Acked == good && s.Poison == int64(len(unknown))
	})
	if got := rows(t, pool); got != int(good) {
		t.Fatalf("%d rows stored, want %d", got, good)
	}
	calls := sets.All()
	var re *inbox.RecordsError
	if len(calls) != 2 || calls[0].Records != n || !errors.As(calls[0].Err, &re) || !slices.Equal(re.Indexes, unknown) ||
		calls[1].Records != int(good) || calls[1].Err != nil {
		t.Fatalf("Sets %+v; want one of %d records refusing records %v, then one of the other %d", calls, n, unknown, good)
	}
	if got := logs.Count("poison message dead-lettered", "no handler registered for event type"); got != len(unknown) {
		t.Fatalf("%d refused records logged, want %d:\n%s", got, len(unknown), logs.String())
	}
	testenv.Eventually(t, 10*time.Second, "the refused messages in the dead-letter queue", func() (bool, error) {
		return r.ready(r.dead) == len(unknown), nil
	})
}

// dialRecorder dials RabbitMQ and keeps the network connections, so a
// test can cut them as a network failure would.
type dialRecorder struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (d *dialRecorder) dial() (*amqp.Connection, error) {
	return amqp.DialConfig(amqpURL, amqp.Config{
		Heartbeat: 10 * time.Second,
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := net.DialTimeout(network, addr, 5*time.Second)
			if err == nil {
				d.mu.Lock()
				d.conns = append(d.conns, c)
				d.mu.Unlock()
			}
			return c, err
		},
	})
}

// cut closes the latest connection.
func (d *dialRecorder) cut() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.conns) > 0 {
		_ = d.conns[len(d.conns)-1].Close()
	}
}

// The connection is cut between Set's commit and the acknowledgement, and
// while batches are being collected: the consumer reconnects, the stale
// delivery tags are never acknowledged (the acks of the cut batches fail),
// and every message is stored once.
func TestConnectionLossMidBatch(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	pool := testenv.MigratedPool(t)
	reg, runs := registry()
	var rec dialRecorder
	var sets atomic.Int64
	hooks := inbox.Hooks{OnSet: func(_ context.Context, e inbox.SetEvent) {
		// Every 7th successful Set: cut the connection after the commit,
		// before the consumer acknowledges.
		if e.Err == nil && sets.Add(1)%7 == 0 {
			rec.cut()
		}
	}}
	ib := testenv.Start(t, context.Background(), pool, reg, testenv.Fast(t, exactLease, inbox.WithHooks(hooks))...)

	const n = 3000
	msgs := make([]amqp.Publishing, n)
	for i := range msgs {
		msgs[i] = message("order_created", uuid.NewString(), `{"i":`+itoa(i)+`}`)
	}
	r.publish(msgs...)

	c := newConsumer(t, r, rec.dial, ib.Client(), inboxrabbitmq.Options{BatchSize: 50})
	stop := run(t, c)
	testenv.Eventually(t, 2*time.Minute, "every event handled", func() (bool, error) {
		events, _ := runs.counts()
		return events == n, nil
	})
	testenv.Eventually(t, time.Minute, "the queue drained", func() (bool, error) {
		// Acked counts only acknowledgements RabbitMQ took; the cut
		// batches were redelivered and acknowledged on a later channel.
		return c.Stats().Acked >= n, nil
	})
	stop()
	s := c.Stats()
	if s.Connections < 3 {
		t.Fatalf("stats %+v: want several reconnections", s)
	}
	if events, total := runs.counts(); events != n || total != n {
		t.Fatalf("handled %d events in %d runs, want %d in %d", events, total, n, n)
	}
	if got := rows(t, pool); got != n {
		t.Fatalf("%d rows stored, want %d", got, n)
	}
	if got := r.ready(r.queue); got != 0 {
		t.Fatalf("%d messages left in the queue, want 0", got)
	}
	t.Logf("stats: %+v", s)
}

// New checks every option up front.
func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	reg, _ := registry()
	ib, err := inbox.New(testenv.Pool(t, 1), reg)
	if err != nil {
		t.Fatal(err)
	}
	dial := inboxrabbitmq.DialURL(amqpURL)
	cases := map[string]inboxrabbitmq.Options{
		"no queue":               {},
		"batch size":             {Queue: "q", BatchSize: inboxrabbitmq.MaxBatchSize + 1},
		"negative batch size":    {Queue: "q", BatchSize: -1},
		"negative wait":          {Queue: "q", BatchWait: -time.Second},
		"id func and header":     {Queue: "q", IDHeader: "x-id", ID: func(*amqp.Delivery) (uuid.UUID, error) { return uuid.Nil, nil }},
		"type func and source":   {Queue: "q", TypeFrom: inboxrabbitmq.TypeFromProperty, TypeFunc: func(*amqp.Delivery) (string, error) { return "", nil }},
		"unknown source":         {Queue: "q", TypeFrom: "body"},
		"header without name":    {Queue: "q", TypeFrom: inboxrabbitmq.TypeFromHeader},
		"name without header":    {Queue: "q", TypeHeader: "x-type"},
		"payload size":           {Queue: "q", MaxPayloadSize: inbox.MaxPayloadSize + 1},
		"backoff order":          {Queue: "q", RetryBackoff: time.Second, MaxRetryBackoff: time.Millisecond},
		"blank mapped type":      {Queue: "q", Types: map[string]string{"a": " "}},
		"negative retry backoff": {Queue: "q", RetryBackoff: -time.Second},
	}
	for name, opts := range cases {
		if _, err := inboxrabbitmq.New(dial, ib.Client(), opts); !errors.Is(err, inbox.ErrInvalidConfig) {
			t.Errorf("%s: New = %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := inboxrabbitmq.New(nil, ib.Client(), inboxrabbitmq.Options{Queue: "q"}); !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Errorf("nil dialer: %v", err)
	}
	if _, err := inboxrabbitmq.New(dial, nil, inboxrabbitmq.Options{Queue: "q"}); !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Errorf("nil client: %v", err)
	}
	c, err := inboxrabbitmq.New(dial, ib.Client(), inboxrabbitmq.Options{Queue: "q"})
	if err != nil || c == nil {
		t.Fatalf("valid options: %v", err)
	}
}

// waitStats waits until cond holds for c's stats, or fails t with them.
func waitStats(t testing.TB, c *inboxrabbitmq.Consumer, within time.Duration, what string, cond func(inboxrabbitmq.Stats) bool) {
	t.Helper()
	if err := testenv.Poll(within, func() (bool, error) { return cond(c.Stats()), nil }); err != nil {
		t.Fatalf("waiting for %s: %v; stats %+v", what, err, c.Stats())
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// Stopping while a batch's Set fails leaves the batch unacknowledged:
// once the consumer's connection is closed every message is ready again.
// A second Run while one runs fails with ErrRunning.
func TestStopLeavesUncommittedBatchUnacked(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	schema := testenv.Schema(t)
	p := newProxy(t, pgTarget(t)) // down for the whole test
	reg, _ := registry()
	writer, err := inbox.New(proxiedPool(t, p, schema), reg, inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	const n = 30
	msgs := make([]amqp.Publishing, n)
	for i := range msgs {
		msgs[i] = message("order_created", uuid.NewString(), `{}`)
	}
	r.publish(msgs...)
	c := newConsumer(t, r, inboxrabbitmq.DialURL(amqpURL), writer.Client(), inboxrabbitmq.Options{})
	stop := run(t, c)
	waitStats(t, c, time.Minute, "Set to fail", func(s inboxrabbitmq.Stats) bool { return s.SetFailures >= 2 })
	if err := c.Run(context.Background()); !errors.Is(err, inboxrabbitmq.ErrRunning) {
		t.Fatalf("second Run = %v, want ErrRunning", err)
	}
	if got := r.ready(r.queue); got != 0 {
		t.Fatalf("%d messages ready while the consumer holds them, want 0", got)
	}
	stop()
	if s := c.Stats(); s.Acked != 0 {
		t.Fatalf("%d messages acknowledged, want 0", s.Acked)
	}
	testenv.Eventually(t, 10*time.Second, "every message ready again", func() (bool, error) {
		return r.ready(r.queue) == n, nil
	})
}

// The connection is cut while a batch waits for the database: the
// consumer drops the batch, reconnects, and once the database is back
// stores every message once.
func TestConnectionLossWhileSetFails(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	schema := testenv.Schema(t)
	direct := testenv.SchemaPool(t, schema, 4)
	if err := inbox.Migrate(context.Background(), direct); err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, pgTarget(t))
	reg, _ := registry()
	writer, err := inbox.New(proxiedPool(t, p, schema), reg, inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	const n = 120
	msgs := make([]amqp.Publishing, n)
	for i := range msgs {
		msgs[i] = message("order_created", uuid.NewString(), `{"i":`+itoa(i)+`}`)
	}
	r.publish(msgs...)
	var rec dialRecorder
	c := newConsumer(t, r, rec.dial, writer.Client(), inboxrabbitmq.Options{BatchSize: 40})
	run(t, c)
	waitStats(t, c, time.Minute, "Set to fail", func(s inboxrabbitmq.Stats) bool { return s.SetFailures >= 2 })
	rec.cut()
	waitStats(t, c, time.Minute, "a reconnection and failing Sets again", func(s inboxrabbitmq.Stats) bool {
		return s.Connections >= 2 && s.SetFailures >= 4
	})
	if s := c.Stats(); s.Acked != 0 {
		t.Fatalf("%d messages acknowledged while Set failed", s.Acked)
	}
	p.up.Store(true)
	waitStats(t, c, time.Minute, "every message stored", func(s inboxrabbitmq.Stats) bool { return s.Acked == n })
	if got := rows(t, direct); got != n {
		t.Fatalf("%d rows stored, want %d", got, n)
	}
	if got := r.ready(r.queue); got != 0 {
		t.Fatalf("%d messages ready in the queue, want 0", got)
	}
}
