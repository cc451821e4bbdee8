// Package broker holds what the inbox's broker adapters share: the ids
// derived from a message's place in its broker, and the rule that a batch
// is acknowledged only after Set committed it.
//
// The adapters (modules github.com/pginbox/inbox/adapters/...) read a
// batch from the broker, map each message to an [inbox.Record], store the
// batch with one Set, and acknowledge exactly those messages once Set has
// returned nil. When Set fails nothing is acknowledged: the broker
// redelivers, and the inbox deduplicates.
package broker

import (
	"strings"

	"github.com/google/uuid"
)

// Namespace is the UUID namespace of the event ids derived from a
// message's coordinates in its broker ([ID]). It never changes: a message
// redelivered after an upgrade must get the same id.
var Namespace = uuid.MustParse("745b3cec-f3b0-456d-b702-a5eb93c7bb5f")

// ID returns the version-5 UUID (SHA-1, under [Namespace]) of a message
// at the given coordinates in broker system: for example
// ID("kafka", topic, partition, offset), ID("redis", stream, entryID),
// ID("jetstream", stream, sequence). The parts are joined with a byte
// that no coordinate holds (0x1f), so ("a", "bc") and ("ab", "c") differ.
// A redelivery of the same message always gets the same id.
func ID(system string, parts ...string) uuid.UUID {
	return uuid.NewSHA1(Namespace, []byte(system+"\x1f"+strings.Join(parts, "\x1f")))
}
