package inboxnats_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pginbox/inbox"
	inboxnats "github.com/pginbox/inbox/adapters/nats"
	"github.com/pginbox/inbox/internal/testenv"
)

// exactLease is the lease of the inboxes these tests start: the default's
// length, so that a renewal held up under load (the race detector, other
// packages' tests beside these) loses no lease, and the tests' exact counts
// of handler runs hold. Nothing here waits for an inbox lease to end.
var exactLease = inbox.WithLease(inbox.DefaultLease)

// natsURL is the NATS server with JetStream the tests need.
const natsURL = "nats://127.0.0.1:4222"

// startNATS says how to start the server the tests need.
const startNATS = "start it with JetStream on 127.0.0.1:4222, for example:\n" +
	"  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- " +
	"-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"

func TestMain(m *testing.M) {
	var spec childSpec
	if child, err := testenv.ChildSpec(childEnv, &spec); child {
		if err == nil {
			err = runChild(spec)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	if err := checkNATS(); err != nil {
		fmt.Fprintf(os.Stderr, "inboxnats tests need NATS with JetStream at %s: %v\n%s\n", natsURL, err, startNATS)
		os.Exit(1)
	}
	os.Exit(testenv.Main(m, "inboxnats", testenv.InboxCode, testenv.PgxPool,
		"github.com/pginbox/inbox/adapters/nats.(*Consumer)", "github.com/nats-io/nats.go.(*Conn)"))
}

// checkNATS reports whether the server answers, with JetStream.
func checkNATS() error {
	nc, err := nats.Connect(natsURL, nats.Timeout(2*time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// env is one test's stream, consumer name, inbox and counted handler.
type env struct {
	t       testing.TB
	nc      *nats.Conn
	js      jetstream.JetStream
	stream  string
	durable string
	schema  string
	pool    *pgxpool.Pool // direct, in the test's schema
	reg     *inbox.Registry
	runs    *runs
}

// newEnv connects to NATS, creates a stream of its own (subjects
// "<stream>.>") and a migrated schema with a counting handler for event
// type "order". The stream and consumer are deleted when t ends.
func newEnv(t testing.TB) *env {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.Timeout(2*time.Second))
	if err != nil {
		t.Fatalf("NATS at %s: %v\n%s", natsURL, err, startNATS)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.ReplaceAll(uuid.NewString()[:13], "-", "")
	e := &env{t: t, nc: nc, js: js, stream: "T" + id, durable: "D" + id, runs: newRuns()}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: e.stream, Subjects: []string{e.stream + ".>"}}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := js.DeleteConsumer(ctx, e.stream, e.durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Errorf("delete consumer: %v", err)
		}
		if err := js.DeleteStream(ctx, e.stream); err != nil {
			t.Errorf("delete stream: %v", err)
		}
		nc.Close()
	})
	e.schema = testenv.Schema(t)
	e.pool = testenv.SchemaPool(t, e.schema, testenv.PoolMaxConns)
	if err := inbox.Migrate(ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	e.reg = inbox.NewRegistry()
	e.reg.On("order", e.runs.handler("h"))
	return e
}

// subject is the subject of event type "order" in the test's stream.
func (e *env) subject(kind string) string { return e.stream + "." + kind }

// publish sends messages asynchronously and waits for every ack.
func (e *env) publish(msgs ...*nats.Msg) {
	e.t.Helper()
	for _, m := range msgs {
		if _, err := e.js.PublishMsgAsync(m); err != nil {
			e.t.Fatalf("publish: %v", err)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		e.t.Fatal("publishing did not complete in 30s")
	}
}

// msg is a message of subject kind carrying id in header Event-Id.
func (e *env) msg(kind, id, payload string) *nats.Msg {
	m := nats.NewMsg(e.subject(kind))
	if id != "" {
		m.Header.Set("Event-Id", id)
	}
	m.Data = []byte(payload)
	return m
}

// options are the consumer options of the test's stream: ids from header
// Event-Id, event type from the subject's last token.
func (e *env) options(more func(*inboxnats.Options)) inboxnats.Options {
	o := inboxnats.Options{
		Stream:    e.stream,
		Durable:   e.durable,
		IDHeader:  "Event-Id",
		FetchWait: 100 * time.Millisecond,
		Types: map[string]string{
			e.subject("order"):   "order",
			e.subject("unknown"): "unknown",
		},
		Logger: testenv.Logger(e.t),
	}
	if more != nil {
		more(&o)
	}
	return o
}

// consumer creates a Consumer storing with client and runs it until t
// ends; the cleanup waits for Run to return.
func (e *env) consumer(client *inbox.Client, o inboxnats.Options) *inboxnats.Consumer {
	e.t.Helper()
	c, err := inboxnats.New(context.Background(), e.js, client, o)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	e.run(c)
	return c
}

// run runs c until the returned stop, or the end of t; either waits for
// Run to return.
func (e *env) run(c *inboxnats.Consumer) (stop func()) {
	return testenv.Background(e.t, c.Run)
}

// writer returns a client of an inbox on pool with the test's registry,
// not started.
func (e *env) writer(pool *pgxpool.Pool, opts ...inbox.Option) *inbox.Client {
	e.t.Helper()
	ib, err := inbox.New(pool, e.reg, append([]inbox.Option{inbox.WithLogger(testenv.Logger(e.t))}, opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	return ib.Client()
}

// settled waits until the consumer has nothing pending or unacknowledged.
func (e *env) settled(within time.Duration) *jetstream.ConsumerInfo {
	e.t.Helper()
	var info *jetstream.ConsumerInfo
	testenv.Eventually(e.t, within, "the consumer to have nothing pending", func() (bool, error) {
		var err error
		info, err = e.consumerInfo()
		if err != nil {
			return false, err
		}
		return info.NumAckPending == 0 && info.NumPending == 0, nil
	})
	return info
}

// info returns the consumer's state now.
func (e *env) info() *jetstream.ConsumerInfo {
	e.t.Helper()
	info, err := e.consumerInfo()
	if err != nil {
		e.t.Fatal(err)
	}
	return info
}

// consumerInfo returns the consumer's state now, or an error.
func (e *env) consumerInfo() (*jetstream.ConsumerInfo, error) {
	c, err := e.js.Consumer(context.Background(), e.stream, e.durable)
	if err != nil {
		return nil, err
	}
	return c.Info(context.Background())
}

// rows counts the rows stored in the test's schema.
func (e *env) rows() int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM inbox_records`).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// runs counts handler runs per (handler key, payload).
type runs struct {
	mu sync.Mutex
	n  map[string]int
}

func newRuns() *runs { return &runs{n: map[string]int{}} }

func (r *runs) handler(key string) inbox.Handler {
	return inbox.HandlerFunc(key, func(_ context.Context, payload []byte) error {
		r.mu.Lock()
		r.n[string(payload)]++
		r.mu.Unlock()
		return nil
	})
}

// check reports the first payload of want not run exactly once, and the
// number of distinct payloads run.
func (r *runs) check(want []string) (string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range want {
		if r.n[p] != 1 {
			return fmt.Sprintf("%q ran %d times", p, r.n[p]), len(r.n)
		}
	}
	return "", len(r.n)
}

func (r *runs) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.n)
}
