package main

import (
	"testing"

	"github.com/pginbox/inbox/examples/internal/orderstest"
)

// TestExample runs the example against an in-process Kafka (kfake) and a
// PostgreSQL database of its own until events published by it were stored
// and handled by both handlers, then stops it as Ctrl-C would and expects a
// clean stop.
func TestExample(t *testing.T) {
	topic := orderstest.Name("kafka")
	orderstest.Run(t, topic, run, "-topic", topic)
}
