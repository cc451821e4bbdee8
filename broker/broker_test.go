package broker_test

import (
	"testing"

	"github.com/google/uuid"

	"github.com/pginbox/inbox/broker"
)

// The ids are part of the stored data: they must never change between
// releases, and must separate their parts.
func TestIDIsStableAndUnambiguous(t *testing.T) {
	got := broker.ID("kafka", "orders", "3", "1042")
	if want := uuid.MustParse("8d1decd1-29b5-58cf-933d-be081432ee1c"); got != want {
		t.Fatalf("ID = %s, want %s: a changed id breaks the deduplication of every deployment", got, want)
	}
	if broker.ID("kafka", "orders", "3", "1042") != got {
		t.Fatal("not deterministic")
	}
	if broker.ID("redis", "a", "bc") == broker.ID("redis", "ab", "c") {
		t.Fatal("parts are not separated")
	}
	if broker.ID("redis", "s", "1-0") == broker.ID("jetstream", "s", "1-0") {
		t.Fatal("systems are not separated")
	}
}
