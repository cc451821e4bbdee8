// Package inboxrabbitmq moves messages from a RabbitMQ queue into an
// inbox (github.com/pginbox/inbox), acknowledging each message only after
// the inbox committed it.
//
// # Guarantee
//
// A message is acknowledged only after the [inbox.Client.Set] that stored
// it returned nil, with one Ack(multiple=true) of its batch's last stored
// delivery tag on the channel the batch came from. A delivery tag of a
// channel that closed is never used: the batch in hand is dropped, the
// consumer dials again, and RabbitMQ redelivers what was not acknowledged.
// Set ignores redelivered messages already stored, so every message is
// stored once, whatever the crashes, lost connections or failing Sets.
//
// # Usage
//
//	c, err := inboxrabbitmq.New(inboxrabbitmq.DialURL("amqp://guest:guest@localhost:5672/"),
//		ib.Client(), inboxrabbitmq.Options{Queue: "orders"})
//	if err != nil { ... } // wraps inbox.ErrInvalidConfig
//	err = c.Run(ctx)      // until ctx ends
//
// # Mapping
//
// The event id comes from the AMQP message-id property (or the header
// Options.IDHeader names, or Options.ID): a UUID text is used as it is,
// any other text becomes broker.ID("rabbitmq", text), so a producer's own
// ids (say "order-42-created") work as long as they are stable across
// retries. RabbitMQ gives a message no stable coordinate of its own (a
// delivery tag lives only as long as its channel), so a message without an
// id cannot be deduplicated: it is poison, unless Options.HashPayloadIDs
// makes its id a hash of its event type and body.
//
// The event type is the routing key by default, or the type property, a
// header, or a function (Options.TypeFrom, Options.TypeFunc), optionally
// renamed through Options.Types. The event date is the timestamp property
// (now when absent). The traceparent and tracestate headers become the
// record's trace context.
//
// # Failures
//
//   - Set fails (the database unreachable): nothing is acknowledged; the
//     same batch is retried with exponential backoff (Options.RetryBackoff
//     to Options.MaxRetryBackoff) while the channel lives. The consumer
//     retries rather than rejecting with requeue, which would make
//     RabbitMQ spin the messages through every consumer while the
//     database is down.
//   - Poison messages (no id, an unusable id, no event type, a body over
//     Options.MaxPayloadSize, a record the inbox rejects, such as an event
//     type with no handler under inbox.RejectUnknown) are rejected without
//     requeue, so RabbitMQ moves them to the queue's dead-letter exchange;
//     they are counted ([Stats].Poison) and logged. Give the queue a
//     dead-letter exchange: without one RabbitMQ discards rejected
//     messages.
//   - A message whose id was stored before with another event type or
//     payload (an upstream bug) is a conflicting duplicate: under the
//     inbox's default inbox.IgnoreConflicting, Set stores nothing for it,
//     the inbox logs it, and the message is acknowledged; under
//     inbox.RejectConflicting it is dead-lettered.
//   - The channel or connection is lost: see the guarantee above.
//   - Stop (ctx ends): a batch whose Set returned nil is acknowledged,
//     any other is left unacknowledged for redelivery.
//
// [Consumer.Stats] counts batches, acknowledged and dead-lettered
// messages, failed Sets and connections; every failure is logged through
// Options.Logger.
package inboxrabbitmq
