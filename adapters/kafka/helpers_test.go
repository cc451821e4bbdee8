package inboxkafka_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pginbox/inbox"
	inboxkafka "github.com/pginbox/inbox/adapters/kafka"
	"github.com/pginbox/inbox/internal/testenv"
)

// exactLease is the lease of the inboxes these tests start: the default's
// length, so that a renewal held up under load (the race detector, other
// packages' tests beside these) loses no lease, and the tests' exact counts
// of handler runs hold. Nothing here waits for an inbox lease to end.
var exactLease = inbox.WithLease(inbox.DefaultLease)

// TestMain runs the tests, or, in a process StartChild started, a
// crash-test child (runChild).
func TestMain(m *testing.M) {
	var spec childSpec
	if child, err := testenv.ChildSpec(childEnv, &spec); child {
		if err != nil {
			fmt.Fprintf(os.Stderr, "child spec: %v\n", err)
			os.Exit(2)
		}
		os.Exit(runChild(spec))
	}
	os.Exit(testenv.Main(m, "inboxkafka", testenv.InboxCode, testenv.PgxPool,
		"github.com/pginbox/inbox/adapters/kafka", "franz-go/pkg/kgo.", "franz-go/pkg/kfake."))
}

// within bounds every wait of these tests.
const within = 90 * time.Second

// cluster starts an in-process Kafka cluster whose topics have partitions
// partitions each, and whose groups accept session timeouts down to a
// second (see crashGroup); it is closed when t ends.
func cluster(t testing.TB, partitions int32, topics ...string) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topics...),
		kfake.GroupMinSessionTimeout(time.Second))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// kafkaClient returns a plain kgo client of the cluster, closed when t
// ends.
func kafkaClient(t testing.TB, seeds []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(seeds...)}, opts...)...)
	if err != nil {
		t.Fatalf("kgo client: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// produce writes recs to the cluster and waits until it has them.
func produce(t testing.TB, seeds []string, recs []*kgo.Record) {
	t.Helper()
	cl := kafkaClient(t, seeds, kgo.ProducerLinger(0))
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for start := 0; start < len(recs); start += 1000 {
		end := min(start+1000, len(recs))
		if err := cl.ProduceSync(ctx, recs[start:end]...).FirstErr(); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}
}

// event returns a record of topic with the id header set to id.
func event(topic string, id uuid.UUID) *kgo.Record {
	return &kgo.Record{
		Topic:   topic,
		Key:     []byte(id.String()),
		Value:   []byte(`{"id":"` + id.String() + `"}`),
		Headers: []kgo.RecordHeader{{Key: idHeader, Value: []byte(id.String())}},
	}
}

const idHeader = "event-id"

// runs counts the runs of a handler per event id.
type runs struct {
	mu   sync.Mutex
	byID map[uuid.UUID]int
}

func (r *runs) handler(key string) inbox.Handler {
	return inbox.HandlerFunc(key, func(ctx context.Context, _ []byte) error {
		a, ok := inbox.AttemptFromContext(ctx)
		if !ok {
			return errors.New("no attempt in context")
		}
		r.mu.Lock()
		r.byID[a.EventID]++
		r.mu.Unlock()
		return nil
	})
}

// check reports whether every one of ids ran exactly once and nothing
// else ran; done is false while runs are missing.
func (r *runs) check(ids map[uuid.UUID]bool) (done bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, n := range r.byID {
		if !ids[id] {
			return false, fmt.Errorf("event %s ran but was not produced", id)
		}
		if n > 1 {
			return false, fmt.Errorf("event %s ran %d times", id, n)
		}
	}
	return len(r.byID) == len(ids), nil
}

// startInbox starts an inbox over pool with one counting handler for each
// event type, and returns its runs.
func startInbox(t testing.TB, pool *pgxpool.Pool, eventTypes ...string) (*inbox.Inbox, *runs) {
	t.Helper()
	return startInboxWith(t, pool, nil, eventTypes...)
}

// startInboxWith is startInbox with more options for the inbox.
func startInboxWith(t testing.TB, pool *pgxpool.Pool, opts []inbox.Option, eventTypes ...string) (*inbox.Inbox, *runs) {
	t.Helper()
	r := &runs{byID: make(map[uuid.UUID]int)}
	reg := inbox.NewRegistry()
	for _, et := range eventTypes {
		reg.Handle(et, r.handler("count_"+et))
	}
	ib := testenv.Start(t, context.Background(), pool, reg, testenv.Fast(t, append([]inbox.Option{exactLease, inbox.WithBatchSize(1000)}, opts...)...)...)
	return ib, r
}

// stored returns the number of distinct events stored in pool's inbox.
func stored(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	err := pool.QueryRow(ctx, `SELECT count(DISTINCT event_id) FROM inbox_records`).Scan(&n)
	return n, err
}

// committedAtEnd reports whether group's committed offsets equal the end
// offsets of every partition of topic; the error reports an offset
// committed past the end.
func committedAtEnd(ctx context.Context, adm *kadm.Client, group, topic string) (bool, error) {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return false, nil // the cluster may be busy; ask again
	}
	got, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		return false, nil
	}
	at := true
	ends.Each(func(e kadm.ListedOffset) {
		if e.Offset == 0 {
			return
		}
		c, ok := got.Lookup(topic, e.Partition)
		if !ok || c.At != e.Offset {
			at = false
		}
		if ok && c.At > e.Offset {
			err = fmt.Errorf("partition %d committed at %d past its end %d", e.Partition, c.At, e.Offset)
		}
	})
	return at, err
}

// committedCount returns how many partitions of topic have an offset
// committed for group.
func committedCount(ctx context.Context, t testing.TB, adm *kadm.Client, group, topic string) int {
	t.Helper()
	got, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		t.Fatalf("fetch offsets: %v", err)
	}
	n := 0
	got.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic && o.At >= 0 {
			n++
		}
	})
	return n
}

// fastGroup are kgo options that make a group react in milliseconds.
func fastGroup() []kgo.Opt {
	return []kgo.Opt{
		kgo.HeartbeatInterval(100 * time.Millisecond),
		kgo.SessionTimeout(6 * time.Second),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100 * time.Millisecond),
	}
}

// run runs c until the returned stop, or the end of t.
func run(t testing.TB, c *inboxkafka.Consumer) (stop func()) {
	return testenv.Background(t, c.Run)
}

// proxy is a TCP proxy to PostgreSQL that can be cut off: while down it
// closes every connection, open or new.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

// newProxy starts a proxy to target, closed when t ends.
func newProxy(t testing.TB, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	p := &proxy{ln: ln, target: target, conns: make(map[net.Conn]bool)}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.setDown(true)
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
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[s] = true, true
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// setDown cuts the proxy off (closing every connection) or lets it
// through again.
func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// proxiedPool returns a migrated pool of its own schema and a pool to the
// same schema through a proxy.
func proxiedPool(t testing.TB) (direct *pgxpool.Pool, proxied *pgxpool.Pool, px *proxy) {
	t.Helper()
	schema := testenv.Schema(t)
	direct = testenv.SchemaPool(t, schema, testenv.PoolMaxConns)
	if err := inbox.Migrate(context.Background(), direct); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	cc, err := pgx.ParseConfig(testenv.URL())
	if err != nil {
		t.Fatalf("parse url: %v", err)
	}
	px = newProxy(t, net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))))
	cfg, err := pgxpool.ParseConfig(testenv.URL())
	if err != nil {
		t.Fatalf("parse url: %v", err)
	}
	cfg.ConnConfig.Host = "127.0.0.1"
	cfg.ConnConfig.Port = uint16(px.ln.Addr().(*net.TCPAddr).Port)
	cfg.ConnConfig.Fallbacks = nil
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.MaxConns = 4
	proxied, err = pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("proxied pool: %v", err)
	}
	t.Cleanup(proxied.Close)
	return direct, proxied, px
}
