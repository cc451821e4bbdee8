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

// BenchmarkThroughput measures entries per second from a stream into
// committed inbox rows ("inbox": read, one Set per batch, XACK), beside
// the broker's own floor ("floor": XREADGROUP and XACK alone), for batch
// sizes 100 and 1000. The entries are added before the clock starts; the
// inbox has one handler per event and no worker running.
//
//	go test -run '^$' -bench Throughput -benchtime 20000x
func BenchmarkThroughput(b *testing.B) {
	for _, batch := range []int{100, 1000} {
		b.Run(fmt.Sprintf("floor/batch=%d", batch), func(b *testing.B) {
			rdb, prefix := newRedis(b)
			stream, group := prefix+"s", prefix+"g"
			fill(b, rdb, stream, b.N)
			ctx := context.Background()
			if err := rdb.XGroupCreateMkStream(ctx, stream, group, "0").Err(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for read := 0; read < b.N; {
				res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
					Group: group, Consumer: "c", Streams: []string{stream, ">"}, Count: int64(batch), Block: -1,
				}).Result()
				if err != nil {
					b.Fatal(err)
				}
				ids := make([]string, len(res[0].Messages))
				for i, m := range res[0].Messages {
					ids[i] = m.ID
				}
				if err := rdb.XAck(ctx, stream, group, ids...).Err(); err != nil {
					b.Fatal(err)
				}
				read += len(ids)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
		b.Run(fmt.Sprintf("inbox/batch=%d", batch), func(b *testing.B) {
			rdb, prefix := newRedis(b)
			_, pool := database(b)
			stream, group := prefix+"s", prefix+"g"
			fill(b, rdb, stream, b.N)
			reg := inbox.NewRegistry()
			reg.On("bench", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
			ib, err := inbox.New(pool, reg)
			if err != nil {
				b.Fatal(err)
			}
			o := fast(b, group, "c", map[string]string{stream: "bench"})
			o.IDField, o.BatchSize = "id", batch
			c, err := inboxredis.New(rdb, ib.Client(), o)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			stop := run(b, c)
			if err := testenv.Poll(10*time.Minute, func() (bool, error) {
				return c.Stats().Acked == int64(b.N), nil
			}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			stop()
			if got, err := stored(pool); err != nil || got != b.N {
				b.Fatalf("stored %d (%v), want %d", got, err, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// fill adds n entries with a UUID and a 200-byte payload to stream.
func fill(b *testing.B, rdb *redis.Client, stream string, n int) {
	payload := `{"pad":"` + strings.Repeat("x", 189) + `"}`
	es := make([]map[string]any, n)
	for i := range es {
		es[i] = map[string]any{"id": uuid.NewString(), "payload": payload}
	}
	add(b, rdb, stream, es)
}
