package inboxrabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
	inboxrabbitmq "github.com/pginbox/inbox/adapters/rabbitmq"
	"github.com/pginbox/inbox/internal/testenv"
)

// exactLease is the lease of the inboxes these tests start: the default's
// length, so that a renewal held up under load (the race detector, other
// packages' tests beside these) loses no lease, and the tests' exact counts
// of handler runs hold. Nothing here waits for an inbox lease to end.
var exactLease = inbox.WithLease(inbox.DefaultLease)

// envURL names the variable that overrides the RabbitMQ the tests use.
const envURL = "INBOX_TEST_AMQP_URL"

// amqpURL is the RabbitMQ of the tests.
var amqpURL = "amqp://guest:guest@127.0.0.1:5672/"

func TestMain(m *testing.M) {
	var spec childSpec
	if ok, err := testenv.ChildSpec(childEnv, &spec); ok {
		if err == nil {
			err = runChild(spec)
		}
		fmt.Fprintf(os.Stderr, "kill-test child: %v\n", err)
		os.Exit(2)
	}
	if u := os.Getenv(envURL); u != "" {
		amqpURL = u
	}
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "inboxrabbitmq tests need RabbitMQ at %s: %v\n"+
			"Start one with `rabbitmq-server -detached` (Debian package rabbitmq-server, user guest/guest on 127.0.0.1:5672),\n"+
			"or set %s to the amqp:// URL of another.\n", amqpURL, err, envURL)
		os.Exit(1)
	}
	_ = conn.Close()
	os.Exit(testenv.Main(m, "inboxrabbitmq", testenv.InboxCode, testenv.PgxPool,
		"github.com/pginbox/inbox/adapters/rabbitmq", "github.com/rabbitmq/amqp091-go"))
}

// rig is a test's own exchange and queue, with a dead-letter exchange and
// queue, on a connection of the test's own. Everything is deleted when the
// test ends.
type rig struct {
	t                  testing.TB
	conn               *amqp.Connection
	ch                 *amqp.Channel
	exchange, queue    string
	deadExchange, dead string
}

func newRig(t testing.TB) *rig {
	t.Helper()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatalf("dial RabbitMQ: %v", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	name := "inboxtest." + t.Name() + "." + uuid.NewString()[:8]
	r := &rig{t: t, conn: conn, ch: ch, exchange: name + ".x", queue: name, deadExchange: name + ".dlx", dead: name + ".dlq"}
	t.Cleanup(func() {
		// A fresh channel: a failed passive declare may have closed ch.
		c, err := conn.Channel()
		if err == nil {
			_, _ = c.QueueDelete(r.queue, false, false, false)
			_, _ = c.QueueDelete(r.dead, false, false, false)
			_ = c.ExchangeDelete(r.exchange, false, false)
			_ = c.ExchangeDelete(r.deadExchange, false, false)
		}
		_ = conn.Close()
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(ch.ExchangeDeclare(r.exchange, "topic", true, false, false, false, nil))
	must(ch.ExchangeDeclare(r.deadExchange, "fanout", true, false, false, false, nil))
	_, err = ch.QueueDeclare(r.dead, true, false, false, false, nil)
	must(err)
	must(ch.QueueBind(r.dead, "", r.deadExchange, false, nil))
	_, err = ch.QueueDeclare(r.queue, true, false, false, false, amqp.Table{"x-dead-letter-exchange": r.deadExchange})
	must(err)
	must(ch.QueueBind(r.queue, "#", r.exchange, false, nil))
	return r
}

// publish publishes messages to the rig's exchange and waits until the
// broker confirmed them all.
func (r *rig) publish(msgs ...amqp.Publishing) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	confirms := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	for _, m := range msgs {
		key := m.Type // the routing key travels in Type here; cleared below
		m.Type = ""
		dc, err := r.ch.PublishWithDeferredConfirmWithContext(ctx, r.exchange, key, true, false, m)
		if err != nil {
			r.t.Fatalf("publish: %v", err)
		}
		confirms = append(confirms, dc)
	}
	for _, dc := range confirms {
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			r.t.Fatalf("publish not confirmed: %v", err)
		}
	}
}

// message is a publishing with routing key key and message id id ("" for
// none).
func message(key, id string, body string) amqp.Publishing {
	return amqp.Publishing{Type: key, MessageId: id, Body: []byte(body), DeliveryMode: amqp.Persistent}
}

// ready returns the number of ready messages in queue.
func (r *rig) ready(queue string) int {
	r.t.Helper()
	q, err := r.inspect(queue)
	if err != nil {
		r.t.Fatal(err)
	}
	return q.Messages
}

// inspect returns queue's counts of ready messages and consumers.
func (r *rig) inspect(queue string) (amqp.Queue, error) {
	ch, err := r.conn.Channel()
	if err != nil {
		return amqp.Queue{}, err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return q, fmt.Errorf("inspect %s: %w", queue, err)
	}
	return q, nil
}

// unacked waits until queue has no consumer, so that RabbitMQ has made
// every message a gone consumer held ready again, and returns the number
// of messages not acknowledged: those ready.
func (r *rig) unacked(queue string) (int, error) {
	var q amqp.Queue
	err := testenv.Poll(time.Minute, func() (bool, error) {
		var err error
		q, err = r.inspect(queue)
		return err == nil && q.Consumers == 0, err
	})
	if err != nil {
		return 0, fmt.Errorf("waiting for %s to have no consumer: %w (it has %d)", queue, err, q.Consumers)
	}
	return q.Messages, nil
}

// runs counts handler runs per event id.
type runs struct {
	mu sync.Mutex
	n  map[uuid.UUID]int
}

func (r *runs) handler() inbox.Handler {
	return inbox.HandlerFunc("count", func(ctx context.Context, _ []byte) error {
		a, _ := inbox.AttemptFromContext(ctx)
		r.mu.Lock()
		r.n[a.EventID]++
		r.mu.Unlock()
		return nil
	})
}

// counts returns the distinct events run and the total runs.
func (r *runs) counts() (events, total int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.n {
		total += n
	}
	return len(r.n), total
}

// twice returns the events run more than once.
func (r *runs) twice() []uuid.UUID {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []uuid.UUID
	for id, n := range r.n {
		if n > 1 {
			ids = append(ids, id)
		}
	}
	return ids
}

// registry returns a registry with a counting handler for "order_created".
func registry() (*inbox.Registry, *runs) {
	r := &runs{n: map[uuid.UUID]int{}}
	reg := inbox.NewRegistry()
	reg.On("order_created", r.handler())
	return reg, r
}

// run runs c until the test ends (or the returned stop is called, which
// waits for Run to return).
func run(t testing.TB, c *inboxrabbitmq.Consumer) (stop func()) {
	return testenv.Background(t, c.Run)
}

// rows returns the number of rows in the inbox of pool.
func rows(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM inbox_records`).Scan(&n); err != nil {
		t.Fatalf("count rows: %v", err)
	}
	return n
}

// proxy forwards TCP connections to target while it is up, and closes
// them at once while it is down.
type proxy struct {
	ln     net.Listener
	target string
	up     atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.up.Load() {
			_ = c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[s] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		go pipe(c, s)
		go pipe(s, c)
	}
}

// cut closes every forwarded connection.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
}

// proxiedPool returns a pool to schema through p.
func proxiedPool(t testing.TB, p *proxy, schema string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testenv.URL())
	if err != nil {
		t.Fatal(err)
	}
	addr := p.ln.Addr().(*net.TCPAddr)
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", uint16(addr.Port)
	for _, fb := range cfg.ConnConfig.Fallbacks {
		fb.Host, fb.Port = "127.0.0.1", uint16(addr.Port)
	}
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// pgTarget returns the host:port of the test database.
func pgTarget(t testing.TB) string {
	cfg, err := pgxpool.ParseConfig(testenv.URL())
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(cfg.ConnConfig.Host, fmt.Sprint(cfg.ConnConfig.Port))
}

// errSentinel is a placeholder error for mapping tests.
var errSentinel = errors.New("sentinel")
