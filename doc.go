// Package inbox is a transactional inbox on PostgreSQL: it makes the
// receiving side of a message broker safe against redelivery, crashes and
// failing handlers.
//
// A consumer stores each received event with [Client.Set] and acknowledges
// the broker only after Set returns. Set is durable, atomic and
// deduplicated: an event is stored once per registered handler, keyed by
// (event id, handler key), and a redelivered event is ignored. Workers
// started with [Inbox.Start] then claim the stored rows and run the
// handlers, retrying failures with backoff until a row is done or dead.
//
// # Guarantees
//
//   - A row is never lost: Set returns only after the rows are committed;
//     a worker that crashes, is killed or loses the database leaves its
//     rows to their lease, after which another worker claims them.
//   - A [Handler] runs at least once per (event, handler key) until it
//     succeeds or the row is dead. A crash, a lost lease or a handler that
//     ignores its timeout can run it again, so plain handlers must be
//     idempotent.
//   - A [TxHandler]'s writes to the inbox's database take effect exactly
//     once: they commit in the transaction that marks the row done.
//   - While a worker holds a row's lease, no other worker runs that row.
//   - Deduplication lasts as long as rows are kept: retention erases done
//     and dead rows after the retention window ([WithRetention]).
//   - Rows are claimed roughly oldest first; there is no ordering guarantee
//     between events.
//
// # Usage
//
//	registry := inbox.NewRegistry()
//	registry.On("order_created",
//		inbox.HandlerFunc("reserve_stock", reserve),
//		inbox.HandlerFunc("send_email", email),
//	)
//	ib, err := inbox.New(pool, registry, inbox.OnDeadCallback(alert))
//	if err != nil { ... }
//	if err := ib.Start(ctx); err != nil { ... } // migrates, then runs workers
//	defer ib.Stop(context.Background())
//
//	// In the broker consumer:
//	rec, err := inbox.NewRecord(msgID, "order_created", body)
//	if err != nil { ... } // bad input: reject the message
//	if err := ib.Client().Set(ctx, rec); err != nil { ... } // do not ack
//	msg.Ack()
//
// # Processing
//
// Each worker claims up to [WithBatchSize] due rows in one statement, with
// FOR UPDATE SKIP LOCKED, only for the (event type, handler key) pairs its
// own registry has, so separate fleets may serve separate event types from
// one table. A claim leases the rows to the worker and counts an attempt.
// Up to [WithConcurrency] handlers run at once, each with a context that
// ends at its timeout ([WithHandlerTimeout], or the handler's own
// Timeout() time.Duration method). Results are written in set-based
// statements, each guarded by the lease, so a late writer never overwrites
// a newer attempt.
//
// While a row is held its lease is renewed every third of [WithLease]. A
// worker that cannot renew cancels its handlers' contexts before the lease
// runs out. A failed attempt is retried after a backoff ([WithRetryBackoff]);
// after [WithMaxRetryAttempt] attempts the row is [Dead] and the
// [DeadCallback] fires. An attempt whose worker died counts too, so an
// event that crashes its worker every time ends dead, not in a loop.
//
// Committed Sets wake idle workers through LISTEN/NOTIFY on a channel named
// after the table's schema; polling every [WithIterationRate] (with jitter,
// [WithIterationSeed]) remains the fallback. Use [WithoutNotify] behind a
// transaction-mode connection pooler, which cannot LISTEN.
//
// # Schema
//
// [Migrate] (called by Start unless [WithoutMigrations]) creates the tables
// inbox_records and inbox_workers in the first schema of the connection's
// search_path, recording its migrations in [VersionTable]. Migrations only
// go up, each in its own transaction, under an advisory lock.
//
// # Observability
//
// [Inbox.Counts], [Inbox.Lookup], [Inbox.OldestDue] and [Inbox.Workers]
// tell what is stored, what is late and which workers are alive. The
// package logs through [log/slog] ([WithLogger]) and reports errors of its
// own machinery to the [ErrorCallback]; the workers recover by themselves
// when the database returns.
package inbox
