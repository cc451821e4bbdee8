package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pginbox/inbox/internal/pgserver"
)

const startNATS = "start it with JetStream on 127.0.0.1:4222, for example:\n" +
	"  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- " +
	"-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"

// TestExample runs the example against the local NATS and a PostgreSQL
// database of its own until events published by it were stored and handled
// by both handlers, then stops it as Ctrl-C would and expects a clean stop.
func TestExample(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		t.Fatalf("the example's test needs NATS at %s: %v\n%s", nats.DefaultURL, err, startNATS)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := pgserver.Find(ctx)
	if err != nil {
		t.Fatalf("the example's test needs PostgreSQL: %v", err)
	}
	defer srv.Close()
	url, drop, err := srv.CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer drop(context.Background())
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	id := time.Now().UnixNano()
	schema, stream, subject := fmt.Sprintf("example_nats_test_%d", id), fmt.Sprintf("EXAMPLE_NATS_TEST_%d", id), fmt.Sprintf("example.nats.test.%d", id)
	defer func() {
		_, _ = pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		_ = js.DeleteStream(context.Background(), stream)
	}()

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, []string{"-database", url, "-schema", schema, "-stream", stream, "-subject", subject, "-every", "50ms"}, &out)
	}()

	const want = 5
	var orders, emails int
	deadline := time.Now().Add(time.Minute)
	for orders < want || emails < want || !strings.Contains(out.String(), "duplicate") {
		if time.Now().After(deadline) {
			t.Fatalf("after a minute: %d orders saved, %d e-mails sent, want %d of each and a duplicate; output:\n%s",
				orders, emails, want, out.String())
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v; output:\n%s", err, out.String())
		case <-time.After(100 * time.Millisecond):
		}
		_ = pool.QueryRow(ctx, fmt.Sprintf(`SELECT
			(SELECT count(*) FROM %[1]s.orders),
			(SELECT count(*) FROM %[1]s.inbox_records WHERE handler_key = 'send_email' AND status = 'done')`,
			pgx.Identifier{schema}.Sanitize())).Scan(&orders, &emails)
	}

	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of being stopped")
	}
	// Every event was stored once, whatever the duplicates published.
	var rows, events int
	if err := pool.QueryRow(ctx, fmt.Sprintf(`SELECT count(*), count(DISTINCT event_id) FROM %s.inbox_records`,
		pgx.Identifier{schema}.Sanitize())).Scan(&rows, &events); err != nil {
		t.Fatal(err)
	}
	if rows != 2*events {
		t.Errorf("%d rows for %d events, want two per event", rows, events)
	}
	if s := out.String(); !strings.Contains(s, "inbox stopped") {
		t.Errorf("output lacks the graceful stop:\n%s", s)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
