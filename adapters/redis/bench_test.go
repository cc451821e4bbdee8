package inboxredis_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
	inboxredis "github.com/pginbox/inbox/adapters/redis"
	"github.com/pginbox/inbox/internal/testenv"
)

// benchBatch is the batch size of both sides of BenchmarkThroughput.
const benchBatch = 100

// BenchmarkThroughput measures entries per second from a Redis stream
// into committed inbox rows (msgs/s: the Consumer reading batches of 100,
// storing each with one Set, XACK), beside Redis's own rate in the same
// run (floor-msgs/s: XREADGROUP and XACK of batches of 100 with the plain
// client), as medians of five turns of b.N entries each. Adding the
// entries, creating the group and the schema are outside the clock; the
// inbox has one handler per event and is not started (no worker competes
// with the Sets).
//
//	go test -run '^$' -bench Throughput -benchtime 20000x
func BenchmarkThroughput(b *testing.B) {
	rdb, prefix := newRedis(b)
	_, pool := database(b)
	reg := inbox.NewRegistry()
	reg.On("bench", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	ib, err := inbox.New(pool, reg)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	turn := 0
	// stream returns a new stream of n entries with a group at its start.
	stream := func(b *testing.B, n int) (string, string) {
		turn++
		s, g := fmt.Sprintf("%ss%d", prefix, turn), prefix+"g"
		fill(b, rdb, s, n)
		if err := rdb.XGroupCreate(ctx, s, g, "0").Err(); err != nil {
			b.Fatal(err)
		}
		return s, g
	}
	floor := func(b *testing.B, n int) time.Duration {
		s, g := stream(b, n)
		start := time.Now()
		for read := 0; read < n; {
			res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
				Group: g, Consumer: "c", Streams: []string{s, ">"}, Count: benchBatch, Block: -1,
			}).Result()
			if err != nil {
				b.Fatal(err)
			}
			ids := make([]string, len(res[0].Messages))
			for i, m := range res[0].Messages {
				ids[i] = m.ID
			}
			if err := rdb.XAck(ctx, s, g, ids...).Err(); err != nil {
				b.Fatal(err)
			}
			read += len(ids)
		}
		return time.Since(start)
	}
	subject := func(b *testing.B, n int) time.Duration {
		s, g := stream(b, n)
		o := fast(b, g, "c", map[string]string{s: "bench"})
		o.IDField, o.BatchSize = "id", benchBatch
		c, err := inboxredis.New(rdb, ib.Client(), o)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		stop := run(b, c)
		// Every millisecond rather than testenv.Poll's ten: a turn of
		// 2,000 entries may take under 100ms.
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for deadline := start.Add(10 * time.Minute); c.Stats().Acked < int64(n); <-tick.C {
			if time.Now().After(deadline) {
				b.Fatalf("%d entries not acknowledged within 10 minutes: stats %+v", n, c.Stats())
			}
		}
		d := time.Since(start)
		stop()
		if st := c.Stats(); st.Stored != int64(n) {
			b.Fatalf("stats %+v; want %d stored", st, n)
		}
		return d
	}
	testenv.CompareThroughput(b, 5, b.N, floor, subject)
	if got, err := stored(pool); err != nil || got != 5*b.N {
		b.Fatalf("stored %d events (%v), want %d", got, err, 5*b.N)
	}
}

// fill adds n entries with a UUID and a 200-byte payload to stream.
func fill(b *testing.B, rdb *redis.Client, stream string, n int) {
	b.Helper()
	payload := `{"pad":"` + strings.Repeat("x", 189) + `"}`
	es := make([]map[string]any, n)
	for i := range es {
		es[i] = map[string]any{"id": uuid.NewString(), "payload": payload}
	}
	add(b, rdb, stream, es)
}
