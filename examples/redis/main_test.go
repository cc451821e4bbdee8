package main

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox/examples/internal/orderstest"
)

const startRedis = `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log`

// TestExample runs the example against the local Redis and a PostgreSQL
// database of its own until events published by it were stored and handled
// by both handlers, then stops it as Ctrl-C would and expects a clean stop.
func TestExample(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("the example's test needs Redis at 127.0.0.1:6379: %v\nstart it with:\n  %s", err, startRedis)
	}
	stream := orderstest.Name("redis")
	defer func() { _ = rdb.Del(context.Background(), stream, stream+".dead").Err() }()
	orderstest.Run(t, stream, run, "-stream", stream)
}
