// Package inboxnats feeds a NATS JetStream stream into an inbox: a durable
// pull consumer whose messages are acknowledged only after the inbox has
// committed them.
//
// # Guarantee
//
// A message is acknowledged (with a synchronous double ack) only after the
// [inbox.Client.Set] that stored it returned nil. Whatever fails or stops
// in between, a message is either committed to the inbox or redelivered by
// JetStream; a redelivered message gets the same event id, so the inbox
// ignores it when it was stored already. Nothing is lost and nothing is
// stored twice.
//
// # Usage
//
//	js, _ := jetstream.New(nc)
//	c, err := inboxnats.New(ctx, js, ib.Client(), inboxnats.Options{
//		Stream:  "ORDERS",
//		Durable: "orders-inbox",
//		Types:   map[string]string{"orders.created": "order_created"},
//	})
//	if err != nil { ... }
//	go c.Run(ctx) // until ctx ends
//
// # How a batch goes
//
// [Consumer.Run] fetches up to [Options.BatchSize] messages (what the
// stream has at once, or, when it has nothing, waits up to
// [Options.FetchWait] for one and takes what followed it), maps each to an
// [inbox.Record], stores them all with one Set and, once Set returned nil,
// double-acks exactly those messages.
//
// Event ids: from the header [Options.IDHeader] names (a UUID) or from
// [Options.IDOf]; a message without that header, or any message when
// neither is set, gets [broker.ID]("jetstream", stream, stream sequence),
// which every redelivery of the message shares. Event types: from
// [Options.TypeOf], else the header [Options.TypeHeader] names, else the
// subject mapped through [Options.Types], else the subject itself. A
// traceparent header becomes the record's trace context
// ([inbox.Record.WithTraceContext]). The event date is when the stream
// stored the message.
//
// # Poison messages
//
// A message that no retry can store is terminated ([jetstream.Msg]'s
// TermWithReason), counted ([Stats].Terminated) and logged at warn level:
// an id header that is not a UUID, a payload over [inbox.MaxPayloadSize],
// an event type that cannot be found, a record [inbox.NewRecord] rejects,
// and a record Set rejects as input (an event type without handlers under
// [inbox.RejectUnknown], a conflicting duplicate under
// [inbox.RejectConflicting]). When Set refuses records of a batch for what
// they are (invalid, or of an event type without handlers), it names them
// ([inbox.RecordsError]): those messages are terminated, each with its own
// error as the reason, and the rest is stored with one more Set. When Set
// rejects a batch for a conflict, the batch is split in halves and each
// half stored again, down to single messages: the good messages are stored
// and acked, the culprits terminated, in at most about 2·k·log2(batch)
// Sets for k culprits. nats-server 2.10.4 and later keep the reason with
// the termination (in its advisory); older servers ignore TermWithReason
// altogether, so against them a plain Term is sent and the reason is only
// logged.
//
// # When Set fails
//
// Any other Set error (the database unreachable, a timeout) acknowledges
// nothing: the messages are negatively acknowledged with a delay equal to
// the current backoff ([Options.RetryBackoff] doubling up to
// [Options.MaxRetryBackoff]), and Run waits that long before fetching
// again, so the same messages come back about when the next try is due.
// The consumer is created with unlimited deliveries (MaxDeliver -1): a
// delivery limit would make JetStream drop messages during a long outage.
//
// # Ack wait
//
// [Options.AckWait] (default [DefaultAckWait]) must be longer than a Set of
// a batch under load. When it is not, JetStream redelivers the batch while
// it is still being stored, possibly to another consumer process; both
// Sets commit (concurrent Sets of overlapping records never deadlock) and
// the inbox stores each event once, so nothing is lost or duplicated, but
// the work is done twice. The double ack of the first delivery may then
// fail; that is logged and counted ([Stats].AckFailures) and harmless.
//
// # Stopping
//
// When Run's context ends, a batch whose Set has started is finished: its
// Set and then its acks go on with a context that ends one ack wait after
// Run's (acks later than that are pointless: JetStream has redelivered).
// A batch fetched but not yet stored is negatively acknowledged without
// delay, so it is redelivered at once. No message is ever acked without
// being committed. A fetch in flight is not interrupted, so Run returns
// within about FetchWait once its Set and acks are done.
//
// While Run's context is live, Set is not bounded by the adapter: bound
// it with the pool's settings (connect timeout, statement_timeout). The
// double acks of a batch are sent up to 32 at a time, each waiting for
// the server's reply.
package inboxnats
