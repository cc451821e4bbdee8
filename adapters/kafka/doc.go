// Package inboxkafka feeds a Kafka consumer group into an inbox
// (github.com/pginbox/inbox), with franz-go: a record's offset is
// committed only once the inbox has stored it, so no record is lost, and
// a record delivered again is stored once.
//
// # The loop
//
// [Consumer.Run] polls a batch of at most [Options.MaxPollRecords]
// records, maps each to an [inbox.Record], stores the batch with one
// [inbox.Client.Set], and then commits exactly those offsets,
// synchronously. Auto-commit is off, and the group's rebalances wait while
// a batch is in hand (kgo.BlockRebalanceOnPoll), so a batch's offsets are
// committed by the member that owns its partitions.
//
//   - Set fails (the database unreachable): nothing is committed; the same
//     batch is retried after a backoff doubling from
//     [Options.RetryBackoff] to [Options.MaxRetryBackoff], never skipped.
//     Rebalances wait at most [Options.MaxBlockRebalance]; then they are
//     allowed, and the batch's records of revoked partitions are dropped
//     uncommitted, for their new owner to read again.
//   - The offset commit fails: the records are stored, so they are retried
//     with the batch (Set ignores them) or, if the partition moves,
//     redelivered to its new owner and ignored by the inbox.
//   - Partitions revoked: what is stored but not committed is committed in
//     the revoke callback; a record stored and never committed (a crash
//     between the two) is read again by the next owner and deduplicated.
//   - Stopping (ctx ends): the attempt in flight finishes within
//     [Options.AttemptTimeout] — the batch stored then committed, or left
//     uncommitted — and the consumer leaves the group.
//
// # Mapping
//
// The event id comes from [Options.EventID], else from the header
// [Options.IDHeader] (a UUID), else it is derived from the record's place:
// broker.ID("kafka", topic, partition, offset) ([DerivedID]), the same on
// every redelivery. Give producers an id header when they may send one
// event twice (a producer retry without idempotence, a replay): only the
// same id is deduplicated.
//
// The event type comes from [Options.EventType], else the header
// [Options.EventTypeHeader], else [Options.EventTypes] by topic, else the
// topic's name. The record's timestamp is the event date; the header
// [Options.TraceHeader] ("traceparent") its trace context.
//
// # Poison records
//
// A record that cannot be stored — an id header that is not a UUID, a
// payload over [inbox.MaxPayloadSize], a blank event type, an event type
// Set rejects as unknown (Set names them: the rest of the batch is stored
// with one more Set), a conflicting duplicate under
// inbox.RejectConflicting (found by splitting the batch) — is produced to
// [Options.DeadLetterTopic] with the reason in the header [HeaderReason],
// synchronously, before its offset is committed; it is logged and counted
// ([Consumer.Stats]). Without a dead-letter topic Run stops with
// [ErrPoisonRecord] and commits nothing of that batch.
//
// # A real cluster
//
// [New] builds the kgo client from [Options.Seeds], [Options.Group] and
// [Options.Topics]; TLS, SASL and any other kgo setting go in its extra
// options (see New). The dead-letter topic must exist, or the cluster must
// create topics on produce. A record larger than kgo's
// ProducerBatchMaxBytes (1 MB by default) cannot be dead-lettered until
// that option is raised to the topic's max.message.bytes.
package inboxkafka
