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
//   - Concurrent Sets never deadlock, whatever their overlap: rows are
//     written in one global order.
//   - Deduplication lasts as long as rows are kept (the dedup window,
//     [WithRetention], 60 days by default). Payloads go earlier (the
//     payload window, [WithPayloadRetention], 7 days): the row stays, with
//     a hash of what was stored, so a redelivery is still a duplicate.
//   - Rows are claimed roughly oldest first; there is no ordering guarantee
//     between events, except for records with the same ordering key
//     ([Record.WithOrderingKey]): for each handler, they run one at a
//     time, in the order Set stored them.
//
// # Usage
//
//	registry := inbox.NewRegistry()
//	registry.On("order_created",
//		inbox.HandlerFunc("reserve_stock", reserve),
//		inbox.HandlerFunc("send_email", email),
//	)
//	// A handler with settings of its own.
//	registry.Handle("order_created", inbox.HandlerFunc("export", export),
//		inbox.HandlerTimeout(time.Minute), inbox.HandlerMaxAttempts(20), inbox.HandlerConcurrency(4))
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
// [Client.SetWithResult] also says how many records were new, duplicates,
// conflicting duplicates (an id stored before with another payload or event
// type) or skipped. [Client.SetTx] stores records in the caller's own
// transaction.
//
// # Handlers
//
// A handler's own settings are given when it is registered, with
// [Registry.Handle] and [HandlerOption]s: [HandlerTimeout],
// [HandlerMaxAttempts], [HandlerBackoff] and [HandlerConcurrency] (the most
// runs of that handler at once in one Inbox). They belong to the
// registration, so wrapping a handler loses none of them; a Timeout
// method on the handler still works. Each row stores its attempt limit when
// it is stored, so every worker applies the same one.
//
// A handler chooses its outcome through the error it returns: nil marks the
// row done; [Discard] makes it dead at once; [RetryAfter] makes it due
// again after a pause without counting the attempt; any other error (or a
// panic, recovered as a [*PanicError], or running past the timeout) fails
// the attempt, which is retried after a backoff until the row's attempts
// are used up. Error texts are stored bounded to [MaxErrorLength] bytes,
// keeping their start and end.
//
// [Middleware] given with [WithMiddleware] wraps every handler run, for
// logging, metrics or tracing: it sees the [Attempt] (event id, type,
// handler key, attempt number, payload) and cannot break a TxHandler's
// guarantee. A handler finds its attempt with [AttemptFromContext].
//
// # Processing
//
// Each worker claims up to [WithBatchSize] due rows in one statement, with
// FOR UPDATE SKIP LOCKED, only for the (event type, handler key) pairs its
// own registry has, so separate fleets may serve separate event types from
// one table. A claim leases the rows to the worker and counts an attempt.
// Up to [WithConcurrency] handlers run at once, each with a context that
// ends at its timeout. Results are written in set-based statements, each
// guarded by the lease, so a late writer never overwrites a newer attempt.
// The claim and the result write are pinned to the plans they were written
// for (an index walk in due order, a TID fetch per row), whatever the
// table's statistics say.
//
// While a row is held its lease is renewed every quarter of [WithLease]. A
// worker that cannot renew cancels its handlers' contexts (with
// [ErrLeaseLost] as the cause) before the lease runs out. An attempt whose
// worker died counts too, so an event that crashes its worker every time
// ends dead, not in a loop.
//
// The dead callback ([OnDeadCallback]) and the error callback
// ([OnErrorCallback]) run in goroutines of their own: a callback that
// blocks delays later callbacks only, a panic is recovered and logged. Each
// dead row records which worker owes its callback, so memory stays bounded
// however many rows die at once, and a callback owed by a process that
// stopped or crashed is delivered by another running Inbox.
//
// Committed Sets wake idle workers through LISTEN/NOTIFY on a channel named
// after the table's schema; polling every [WithIterationRate] (with jitter,
// [WithIterationSeed]) remains the fallback.
//
// [Inbox.Stop] stops claiming, hands back the rows not yet started, waits
// for the running handlers, writes their results and delivers the dead
// callbacks still owed. Called from one of the Inbox's own handlers or
// callbacks it returns [ErrStopInHandler] instead of waiting for itself.
//
// # Ordered and controlled processing
//
// Records with an ordering key ([Record.WithOrderingKey]) run one at a
// time per (handler key, ordering key), in stored order; a failed row holds
// its key, a dead row parks it until [Admin.Replay] or [Admin.SkipParked]
// (or the handler moves on: [HandlerMovesOnPastDead]), and a key with a
// long backlog does not hold up other keys. [HandlerGlobalConcurrency]
// limits a handler's rows in progress across every instance.
// [Admin.Backfill] gives a handler added to an event type rows for the
// events stored before it. [WithMaxBacklog] bounds the backlog of an event
// type: Set then fails fast with an error wrapping [ErrBacklogFull].
//
// # Connection poolers
//
// Behind PgBouncer in transaction mode (or a pooler like it):
//
//   - pass [WithTransactionPooler] to New: the inbox then uses no named
//     prepared statements, whatever the pool's DefaultQueryExecMode (every
//     pgx exec mode works);
//   - for wakeups, give a direct connection with [WithListenConfig] (Set's
//     notifications, sent through the pooler, reach it), or use
//     [WithoutNotify] to poll; without either, the inbox finds that LISTEN
//     receives nothing, logs a warning and polls;
//   - [Migrate] needs nothing: it uses no prepared statements and takes a
//     lease row ([LockTable]) instead of a session advisory lock;
//   - PgBouncer 1.18 refuses a search_path startup parameter: keep the
//     inbox in the role's default schema, or set search_path for the role
//     (ALTER ROLE ... SET search_path).
//
// Your own queries behind the pooler (TxHandlers included) need an exec
// mode that works there too, such as pgx.QueryExecModeExec.
//
// # Schema
//
// [Migrate] (called by Start unless [WithoutMigrations]) creates the table
// inbox_records and the tables beside it in the first schema of the
// connection's search_path, recording its migrations in [VersionTable].
// Migrations only go up; each runs in its own transaction, except an index
// build on an existing table, which runs concurrently. The migration that
// adds the row counters counts the rows present while it holds off writes
// (about a second per million rows). It needs PostgreSQL 14 or
// later. Migrate and Start check that every table is there and say which
// one is missing ([ErrSchema]).
//
// # Operations
//
// An [Admin] ([NewAdmin], or [Inbox.Admin]) operates the table from any
// process with a pool alone: [Admin.Stats] per handler (rows per status,
// lag, throughput; cheap however many rows are kept, as the table counts
// its rows itself), [Admin.List] and [Admin.Show], dead rows grouped by
// failure ([Admin.DeadGroups]), [Admin.Replay], [Admin.Discard],
// [Admin.Delete], [Admin.Purge], and [Admin.Pause] and [Admin.Resume] of a
// handler in every process. The inboxctl command
// (github.com/pginbox/inbox/cmd/inboxctl) and its web dashboard are built on
// it.
//
// # Observability
//
// [Inbox.Counts], [Inbox.Lookup], [Inbox.OldestDue] and [Inbox.Workers]
// tell what is stored, what is late and which workers are alive. [Hooks]
// ([WithHooks]) report every Set, claim, handler run (with its outcome and
// the event's lag), result write, dead row and retention run, for metrics;
// a [Propagator] ([WithPropagator]) stores the trace context of each Set
// with its rows, so that the handler's trace continues the producer's.
// The OpenTelemetry module (github.com/pginbox/inbox/otel) builds metrics,
// spans and the propagator on them; the core has no dependency on it. The
// package logs through [log/slog] ([WithLogger]) and reports errors of its
// own machinery to the [ErrorCallback]; the workers recover by themselves
// when the database returns.
package inbox
