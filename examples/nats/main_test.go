package main

import (
	"context"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pginbox/inbox/examples/internal/orderstest"
)

const startNATS = "start it with JetStream on 127.0.0.1:4222, for example:\n" +
	"  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- " +
	"-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"

// TestExample runs the example against the local NATS and a PostgreSQL
// database of its own until events published by it were stored and handled
// by both handlers, then stops it as Ctrl-C would and expects a clean stop.
func TestExample(t *testing.T) {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		t.Fatalf("the example's test needs NATS at %s: %v\n%s", nats.DefaultURL, err, startNATS)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	name := orderstest.Name("nats")
	stream, subject := strings.ToUpper(name), strings.ReplaceAll(name, "_", ".")
	defer func() { _ = js.DeleteStream(context.Background(), stream) }()
	orderstest.Run(t, name, run, "-stream", stream, "-subject", subject)
}
