package main

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox/examples/internal/orderstest"
)

const amqpURL = "amqp://guest:guest@127.0.0.1:5672/"

// TestExample runs the example against the local RabbitMQ and a PostgreSQL
// database of its own until events published by it were stored and handled
// by both handlers, then stops it as Ctrl-C would and expects a clean stop.
func TestExample(t *testing.T) {
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatalf("the example's test needs RabbitMQ at %s: %v\n"+
			"Start one with `rabbitmq-server -detached` (Debian package rabbitmq-server, user guest/guest on 127.0.0.1:5672).", amqpURL, err)
	}
	defer conn.Close()
	queue := orderstest.Name("rabbitmq")
	defer func() {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(queue, false, false, false)
			_, _ = ch.QueueDelete(queue+".dead", false, false, false)
			_ = ch.Close()
		}
	}()
	orderstest.Run(t, queue, run, "-amqp", amqpURL, "-queue", queue)
}
