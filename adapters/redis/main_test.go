package inboxredis_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
	inboxredis "github.com/pginbox/inbox/adapters/redis"
	"github.com/pginbox/inbox/internal/testenv"
)

// exactLease is the lease of the inboxes these tests start: the default's
// length, so that a renewal held up under load (the race detector, other
// packages' tests beside these) loses no lease, and the tests' exact counts
// of handler runs hold. Nothing here waits for an inbox lease to end.
var exactLease = inbox.WithLease(inbox.DefaultLease)

// redisAddr is the Redis server the tests use.
const redisAddr = "127.0.0.1:6379"

// startRedis tells how to start the Redis server the tests need.
const startRedis = `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log`

func TestMain(m *testing.M) {
	var spec childSpec
	if child, err := testenv.ChildSpec(childEnv, &spec); child {
		if err == nil {
			err = runChild(spec)
		}
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	if err := pingRedis(); err != nil {
		fmt.Fprintf(os.Stderr, "inboxredis tests need Redis at %s: %v\nstart it with:\n  %s\n", redisAddr, err, startRedis)
		os.Exit(1)
	}
	os.Exit(testenv.Main(m, "inboxredis", testenv.InboxCode, testenv.PgxPool,
		"github.com/pginbox/inbox/adapters/redis.(*", "github.com/redis/go-redis"))
}

func pingRedis() error {
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return rdb.Ping(ctx).Err()
}

// newRedis returns a client of the test server, closed when t ends, and a
// prefix of key names of t's own: every key under it is deleted when t
// ends.
func newRedis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("Redis at %s does not answer (%v); start it with:\n  %s", redisAddr, err, startRedis)
	}
	prefix := "inboxredis-test-" + uuid.NewString()[:8] + "-"
	t.Cleanup(func() {
		ctx := context.Background()
		keys, err := rdb.Keys(ctx, prefix+"*").Result()
		if err == nil && len(keys) > 0 {
			err = rdb.Del(ctx, keys...).Err()
		}
		if err != nil {
			t.Errorf("delete test keys %s*: %v", prefix, err)
		}
		_ = rdb.Close()
	})
	return rdb, prefix
}

// runs counts handler runs per event id.
type runs struct {
	mu sync.Mutex
	n  map[uuid.UUID]int
	tr map[uuid.UUID]string // trace context of each event's last run
}

func newRuns() *runs { return &runs{n: map[uuid.UUID]int{}, tr: map[uuid.UUID]string{}} }

func (r *runs) handler(key string) inbox.Handler {
	return inbox.HandlerFunc(key, func(ctx context.Context, _ []byte) error {
		a, _ := inbox.AttemptFromContext(ctx)
		r.mu.Lock()
		r.n[a.EventID]++
		r.tr[a.EventID] = a.TraceContext
		r.mu.Unlock()
		return nil
	})
}

func (r *runs) snapshot() (map[uuid.UUID]int, map[uuid.UUID]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, tr := make(map[uuid.UUID]int, len(r.n)), make(map[uuid.UUID]string, len(r.tr))
	for k, v := range r.n {
		n[k] = v
	}
	for k, v := range r.tr {
		tr[k] = v
	}
	return n, tr
}

// registry registers, for each event type, the counting handler "count"
// and a TxHandler "row" inserting the event id into the table seen, whose
// key makes a second run fail.
func registry(r *runs, types ...string) *inbox.Registry {
	reg := inbox.NewRegistry()
	for _, typ := range types {
		reg.On(typ, r.handler("count"), inbox.TxHandlerFunc("row", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
			a, _ := inbox.AttemptFromContext(ctx)
			_, err := tx.Exec(ctx, `INSERT INTO seen (id) VALUES ($1)`, a.EventID)
			return err
		}))
	}
	return reg
}

// database returns a migrated schema of t's own with the table seen, and a
// pool in it.
func database(t testing.TB) (string, *pgxpool.Pool) {
	t.Helper()
	schema := testenv.Schema(t)
	pool := testenv.SchemaPool(t, schema, testenv.PoolMaxConns)
	if err := inbox.Migrate(context.Background(), pool); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if _, err := pool.Exec(context.Background(), `CREATE TABLE seen (id uuid PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	return schema, pool
}

// run runs c until t ends, and checks that Run returns nil then.
func run(t testing.TB, c *inboxredis.Consumer) (stop func()) {
	return testenv.Background(t, c.Run)
}

// add XADDs the entries to stream, 1,000 to a pipeline.
func add(t testing.TB, rdb *redis.Client, stream string, entries []map[string]any) []string {
	t.Helper()
	ctx := context.Background()
	var ids []string
	for start := 0; start < len(entries); start += 1000 {
		cmds, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, e := range entries[start:min(start+1000, len(entries))] {
				p.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: e})
			}
			return nil
		})
		if err != nil {
			t.Fatalf("XADD: %v", err)
		}
		for _, c := range cmds {
			ids = append(ids, c.(*redis.StringCmd).Val())
		}
	}
	return ids
}

// pending returns the group's pending count on stream, -1 while the group
// does not exist.
func pending(rdb *redis.Client, stream, group string) (int64, error) {
	p, err := rdb.XPending(context.Background(), stream, group).Result()
	if err != nil && strings.HasPrefix(err.Error(), "NOGROUP") {
		return -1, nil
	}
	if err != nil {
		return 0, err
	}
	return p.Count, nil
}

// seen returns how many rows the TxHandler "row" wrote.
func seen(pool *pgxpool.Pool) (int, error) {
	var n int
	err := pool.QueryRow(context.Background(), `SELECT count(*) FROM seen`).Scan(&n)
	return n, err
}

// stored returns how many distinct events the inbox holds.
func stored(pool *pgxpool.Pool) (int, error) {
	var n int
	err := pool.QueryRow(context.Background(), `SELECT count(DISTINCT event_id) FROM inbox_records`).Scan(&n)
	return n, err
}
