// Package inboxredis feeds an inbox from Redis streams: it reads entries
// through a consumer group, stores each batch with one [inbox.Client.Set],
// and acknowledges (XACK) exactly those entries once Set has returned nil.
//
// The guarantee: an entry is never acknowledged before its record has
// committed. When Set fails nothing is acknowledged; the entries stay in
// the group's pending entries list, the [Consumer] backs off and reads
// them again, and the inbox ignores what it stored already. A consumer
// that dies between the commit and the acknowledgement leaves its entries
// pending: it re-reads them when it starts again under the same name, and
// any other consumer of the group takes them over (XAUTOCLAIM) once they
// have been idle for [Options.ClaimIdle].
//
// It needs Redis 6.2 or later (XAUTOCLAIM) and is tested on Redis 7.0.
//
// # Mapping
//
// Each entry becomes one [inbox.Record]:
//
//   - the event id is the UUID in the field [Options.IDField], or what
//     [Options.ID] returns; with neither, it is derived from the entry's
//     place, broker.ID("redis", stream, entryID), which a redelivery of the
//     same entry keeps but a producer that adds the same event twice does
//     not;
//   - the event type is the one [Options.Streams] gives the stream, or the
//     value of the field [Options.TypeField];
//   - the payload is the value of the field [Options.PayloadField]
//     ("payload" by default);
//   - the event date is the time in the entry's id (when Redis added it);
//   - a field "traceparent" ([Options.TraceField]) becomes the record's
//     trace context ([inbox.Record.WithTraceContext]).
//
// # Dead letters
//
// An entry that cannot become a record (an id that is not a UUID, a missing
// field, a payload over [inbox.MaxPayloadSize], a blank event type), or
// that Set rejects on its own ([inbox.ErrUnknownEventType] under
// [inbox.RejectUnknown], [inbox.ErrInvalidRecord], a conflict under
// [inbox.RejectConflicting]), is added to the dead-letter stream
// "<stream>.dead" ([Options.DeadLetterSuffix]) with its original fields and
// the reason, then acknowledged. It is counted ([Stats].DeadLettered) and
// logged at warn level; nothing is acknowledged silently. The other entries
// of its batch are stored as usual: Set names the records it refuses
// ([inbox.RecordsError], [inbox.ConflictError]), and the Consumer
// dead-letters those, each with its own error as the reason, and stores
// the others with one more Set.
package inboxredis
