package inbox

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Defaults. Each can be changed with the option named beside it.
const (
	// DefaultIterationRate is the pause between polls of an idle worker
	// ([WithIterationRate]). Notifications wake workers sooner; polling is
	// the fallback that never misses a row.
	DefaultIterationRate = 5 * time.Second
	// DefaultIterationSeed spreads polls of many workers apart
	// ([WithIterationSeed]): each pause is the iteration rate plus a random
	// part of up to seed × 10 % of the rate.
	DefaultIterationSeed = 2
	// DefaultHandlerTimeout bounds one handler attempt ([WithHandlerTimeout]).
	DefaultHandlerTimeout = 10 * time.Second
	// DefaultRetryAttempts is how many attempts a row gets before it is dead
	// ([WithMaxRetryAttempt]).
	DefaultRetryAttempts = 5
	// DefaultEraseInterval is the pause between retention runs
	// ([WithRetention]).
	DefaultEraseInterval = 24 * time.Hour
	// DefaultRetentionDays is how long done and dead rows are kept
	// ([WithRetention]): the dedup window. Deduplication holds only while
	// rows are kept.
	DefaultRetentionDays = 60
	// DefaultPayloadRetentionDays is how long done rows keep their payload
	// ([WithPayloadRetention]): a week covers noticing a problem, looking
	// at what was received and replaying it, while a 60-day dedup window
	// keeps about 220 bytes per event on disk beyond it (measured: a
	// 132-byte row, its index entry and the table's free space), whatever
	// the payload size.
	DefaultPayloadRetentionDays = 7
	// MaxAttempts is the largest attempt limit [WithMaxRetryAttempt] and
	// [HandlerMaxAttempts] accept.
	MaxAttempts = math.MaxInt32
	// MaxRetentionDays is the longest retention window [WithRetention]
	// accepts: 100 years.
	MaxRetentionDays = 36500
	// DefaultConcurrency is how many handlers one Inbox runs at once
	// ([WithConcurrency]).
	DefaultConcurrency = 100
	// DefaultBatchSize is the most rows one claim takes ([WithBatchSize]).
	DefaultBatchSize = 500
	// DefaultLease is how long a claimed row stays reserved for its worker
	// without a renewal ([WithLease]). Workers renew the leases of their
	// rows every quarter of it, so a row whose worker died is claimable again
	// within one lease.
	DefaultLease = 5 * time.Second
	// DefaultRetryBackoff and DefaultMaxRetryBackoff shape the pause before
	// a failed row's next attempt ([WithRetryBackoff]).
	DefaultRetryBackoff    = time.Second
	DefaultMaxRetryBackoff = 10 * time.Minute
)

// Option configures an Inbox. Options are checked by [New], which returns
// an error wrapping [ErrInvalidConfig] naming any option with a bad value.
type Option func(*config) error

// DeadRecord describes a row that used up its attempts.
type DeadRecord struct {
	EventID    uuid.UUID
	EventType  string
	HandlerKey string
	Attempts   int
	// Err is the last attempt's failure. It wraps [ErrLeaseExpired] when the
	// last attempt's worker died, [ErrDiscarded] when the handler returned
	// [Discard], and [ErrHandlerTimeout] for a timeout. When the row died
	// in this process and its error's text was at most [MaxErrorLength]
	// bytes, Err is the handler's own error (so errors.Is and errors.As see
	// everything it wraps); otherwise Err carries the stored, bounded text
	// and those of the package's own errors it wrapped.
	Err error
}

// DeadCallback is called for each row that becomes dead, after the dead
// status is committed.
//
// Calls are made one at a time from a goroutine of their own, never from
// the goroutines that claim rows, run handlers, write results or renew
// leases: a slow or blocked callback delays later callbacks only. A panic in
// the callback is recovered and logged, and the next record is delivered.
//
// Each dead row records, in the table, which worker owes its callback
// until the callback has returned; so memory stays bounded however many
// rows die at once (the worker reads them back in pages of 100), and none is
// lost: a record that a stopped or crashed process still owed is delivered
// by another running Inbox that has a dead callback and handles that event
// type and handler key. Delivery is at least once: the worker records the
// deliveries of a page after its callbacks returned, so a crash in between
// delivers them again. ctx ends when [Inbox.Stop]'s context does.
type DeadCallback func(ctx context.Context, rec DeadRecord)

// ErrorCallback is called with errors of the inbox's own machinery (the
// database unreachable, a lease lost, a result that could not be written).
// Handler failures are not reported here: they are recorded in their rows.
// The worker keeps going after every such error.
//
// Calls are made one at a time from a goroutine of their own; a panic in the
// callback is recovered and logged. Every error is also logged at error
// level; if the callback falls more than 1,000 errors behind, the excess is
// passed on as one error wrapping [ErrErrorsDropped] that counts them.
type ErrorCallback func(err error)

// UnknownEventTypes says what Set does with a record whose event type has
// no registered handler.
type UnknownEventTypes int

const (
	// RejectUnknown makes Set fail with [ErrUnknownEventType] and write
	// nothing. It is the default: no event is dropped silently.
	RejectUnknown UnknownEventTypes = iota
	// SkipUnknown makes Set store the other records and skip these, for a
	// consumer subscribed to more event types than it handles. Skipped
	// records are logged at debug level.
	SkipUnknown
)

// ConflictingDuplicates says what Set does with a conflicting duplicate: a
// record whose id is stored already (or appears earlier in the same call)
// with another event type or payload. Either way the stored version stays
// and the conflict is logged at warn level with the event id and counted
// in [SetResult].
type ConflictingDuplicates int

const (
	// IgnoreConflicting stores nothing for the conflicting record and lets
	// the rest of the call proceed. It is the default: a redelivery must
	// never block a consumer.
	IgnoreConflicting ConflictingDuplicates = iota
	// RejectConflicting makes Set fail with a [*ConflictError] naming the
	// ids, and write nothing of the call. Set then runs in a transaction of
	// its own (SetTx in a savepoint), which costs a round trip or two.
	RejectConflicting
)

type config struct {
	iterationRate  time.Duration
	iterationSeed  int
	handlerTimeout time.Duration
	maxAttempts    int
	eraseInterval  time.Duration
	retentionDays  int
	onDead         DeadCallback
	onError        ErrorCallback
	concurrency    int
	batchSize      int
	logger         *slog.Logger
	migrate        bool
	notify         bool
	unknown        UnknownEventTypes
	lease          time.Duration
	backoffBase    time.Duration
	backoffMax     time.Duration
	payloadDays    int
	conflicts      ConflictingDuplicates
	middleware     []Middleware
	hooks          hooks
	propagator     Propagator
	pooler         bool
	listenConfig   *pgx.ConnConfig
	hasDead        bool // a dead callback was set
	hasError       bool // an error callback was set
	backlogLimits  []backlogLimit
}

func defaultConfig() config {
	return config{
		iterationRate:  DefaultIterationRate,
		iterationSeed:  DefaultIterationSeed,
		handlerTimeout: DefaultHandlerTimeout,
		maxAttempts:    DefaultRetryAttempts,
		eraseInterval:  DefaultEraseInterval,
		retentionDays:  DefaultRetentionDays,
		onDead:         func(context.Context, DeadRecord) {},
		onError:        func(error) {},
		concurrency:    DefaultConcurrency,
		batchSize:      DefaultBatchSize,
		logger:         slog.Default(),
		migrate:        true,
		notify:         true,
		unknown:        RejectUnknown,
		lease:          DefaultLease,
		backoffBase:    DefaultRetryBackoff,
		backoffMax:     DefaultMaxRetryBackoff,
		payloadDays:    DefaultPayloadRetentionDays,
	}
}

func invalid(option string, value any, rule string) error {
	return fmt.Errorf("%w: %s(%v): %s", ErrInvalidConfig, option, value, rule)
}

func positive(option string, d time.Duration) error {
	if d <= 0 {
		return invalid(option, d, "must be positive")
	}
	return nil
}

// WithIterationRate sets the pause between polls of an idle worker.
func WithIterationRate(dur time.Duration) Option {
	return func(c *config) error {
		c.iterationRate = dur
		return positive("WithIterationRate", dur)
	}
}

// WithIterationSeed sets the jitter added to each poll pause: a random part
// of up to seed × 10 % of the iteration rate. Seed 0 means no jitter; the
// most is 100.
func WithIterationSeed(seed int) Option {
	return func(c *config) error {
		c.iterationSeed = seed
		if seed < 0 || seed > 100 {
			return invalid("WithIterationSeed", seed, "must be between 0 and 100")
		}
		return nil
	}
}

// WithHandlerTimeout sets how long one handler attempt may run. A handler
// may override it with a Timeout() time.Duration method.
func WithHandlerTimeout(dur time.Duration) Option {
	return func(c *config) error {
		c.handlerTimeout = dur
		return positive("WithHandlerTimeout", dur)
	}
}

// WithMaxRetryAttempt sets how many attempts a row gets before it is dead,
// for handlers without [HandlerMaxAttempts]. The limit is stored with each
// row when Set stores it, so every worker applies the row's own limit. A
// value above [MaxAttempts] counts as MaxAttempts.
func WithMaxRetryAttempt(maxAttempt int) Option {
	return func(c *config) error {
		c.maxAttempts = min(maxAttempt, MaxAttempts)
		if maxAttempt < 1 {
			return invalid("WithMaxRetryAttempt", maxAttempt, "must be at least 1")
		}
		return nil
	}
}

// WithRetention sets retention: every eraseInterval, done and dead rows
// last changed more than windowDays days ago are deleted. This is the dedup
// window: a redelivery of a deleted event is stored and processed again.
// Rows that are not finished are never deleted. windowDays is at most
// [MaxRetentionDays]. Of all running Inboxes on a table, one at a time runs
// retention, once per interval.
func WithRetention(eraseInterval time.Duration, windowDays int) Option {
	return func(c *config) error {
		c.eraseInterval, c.retentionDays = eraseInterval, windowDays
		if err := positive("WithRetention", eraseInterval); err != nil {
			return err
		}
		if windowDays < 1 {
			return invalid("WithRetention", windowDays, "window must be at least 1 day")
		}
		if windowDays > MaxRetentionDays {
			return invalid("WithRetention", windowDays,
				fmt.Sprintf("window must be at most %d days (MaxRetentionDays)", MaxRetentionDays))
		}
		return nil
	}
}

// OnDeadCallback sets the function called for each row that becomes dead.
func OnDeadCallback(callback DeadCallback) Option {
	return func(c *config) error {
		if callback == nil {
			return invalid("OnDeadCallback", "nil", "callback must not be nil")
		}
		c.onDead, c.hasDead = callback, true
		return nil
	}
}

// OnErrorCallback sets the function called with the inbox's own errors.
func OnErrorCallback(callback ErrorCallback) Option {
	return func(c *config) error {
		if callback == nil {
			return invalid("OnErrorCallback", "nil", "callback must not be nil")
		}
		c.onError, c.hasError = callback, true
		return nil
	}
}

// WithConcurrency sets how many handlers one Inbox runs at once, from 1 to
// 100000. Each running [TxHandler] holds a pool connection.
func WithConcurrency(n int) Option {
	return func(c *config) error {
		c.concurrency = n
		if n < 1 || n > 100000 {
			return invalid("WithConcurrency", n, "must be between 1 and 100000")
		}
		return nil
	}
}

// WithBatchSize sets the most rows one claim takes, from 1 to 10000. A
// worker has at most concurrency + batch size rows queued or running at
// once, and at most twice that with the rows whose results wait to be
// written. A claim also leases, behind the first row of an ordering key
// it takes, up to four of the rows waiting behind it, to run one after
// the other ([Record.WithOrderingKey]): a worker holds up to four times
// (concurrency + batch size) of those besides.
func WithBatchSize(n int) Option {
	return func(c *config) error {
		c.batchSize = n
		if n < 1 || n > 10000 {
			return invalid("WithBatchSize", n, "must be between 1 and 10000")
		}
		return nil
	}
}

// WithLogger sets the logger. The default is [slog.Default].
func WithLogger(logger *slog.Logger) Option {
	return func(c *config) error {
		if logger == nil {
			return invalid("WithLogger", "nil", "logger must not be nil")
		}
		c.logger = logger
		return nil
	}
}

// WithoutMigrations makes Start skip [Migrate]; Start then only checks that
// the table exists. Use it when migrations run as a separate deploy step.
func WithoutMigrations() Option {
	return func(c *config) error {
		c.migrate = false
		return nil
	}
}

// WithoutNotify turns off LISTEN/NOTIFY wakeups: Set sends no notification
// and workers only poll, every [WithIterationRate]. Behind a
// transaction-mode connection pooler, which cannot LISTEN, use it or give a
// direct connection with [WithListenConfig].
func WithoutNotify() Option {
	return func(c *config) error {
		c.notify = false
		return nil
	}
}

// WithUnknownEventTypes sets what Set does with records whose event type
// has no handler: [RejectUnknown] (the default) or [SkipUnknown].
func WithUnknownEventTypes(policy UnknownEventTypes) Option {
	return func(c *config) error {
		c.unknown = policy
		if policy != RejectUnknown && policy != SkipUnknown {
			return invalid("WithUnknownEventTypes", int(policy), "must be RejectUnknown or SkipUnknown")
		}
		return nil
	}
}

// WithLease sets how long a claimed row stays reserved without renewal.
// Running workers renew their leases every quarter of it; a row whose worker
// died becomes claimable again once its lease runs out. It must be between
// 300ms and 24h.
func WithLease(dur time.Duration) Option {
	return func(c *config) error {
		c.lease = dur
		if dur < 300*time.Millisecond || dur > 24*time.Hour {
			return invalid("WithLease", dur, "must be between 300ms and 24h")
		}
		return nil
	}
}

// WithRetryBackoff sets the pause before a failed row's next attempt: after
// attempt n fails, the pause is d/2 plus a random part of up to d/2, where
// d = min(max, base × 2^(n-1)).
func WithRetryBackoff(base, max time.Duration) Option {
	return func(c *config) error {
		c.backoffBase, c.backoffMax = base, max
		if err := positive("WithRetryBackoff", base); err != nil {
			return err
		}
		if max < base {
			return invalid("WithRetryBackoff", max, "max must not be below base")
		}
		return nil
	}
}

// WithPayloadRetention sets the payload window: retention erases the
// payload of done rows last changed more than days days ago, keeping the
// row (and a hash of its payload) for deduplication until the dedup window
// of [WithRetention] ends. Dead rows keep their payload until deleted. 0
// erases a done row's payload at the first retention run after it is done.
// A window at least as long as the dedup window never erases.
func WithPayloadRetention(days int) Option {
	return func(c *config) error {
		c.payloadDays = days
		if days < 0 || days > MaxRetentionDays {
			return invalid("WithPayloadRetention", days,
				fmt.Sprintf("must be between 0 and %d days (MaxRetentionDays)", MaxRetentionDays))
		}
		return nil
	}
}

// WithConflictingDuplicates sets what Set does with a record whose id is
// stored already with another event type or payload: [IgnoreConflicting]
// (the default) or [RejectConflicting].
func WithConflictingDuplicates(policy ConflictingDuplicates) Option {
	return func(c *config) error {
		c.conflicts = policy
		if policy != IgnoreConflicting && policy != RejectConflicting {
			return invalid("WithConflictingDuplicates", int(policy), "must be IgnoreConflicting or RejectConflicting")
		}
		return nil
	}
}

// WithMiddleware adds middleware around every handler run, the first given
// outermost. It may be given several times; the lists are appended.
func WithMiddleware(mw ...Middleware) Option {
	return func(c *config) error {
		for i, m := range mw {
			if m == nil {
				return invalid("WithMiddleware", fmt.Sprintf("middleware %d", i), "must not be nil")
			}
		}
		c.middleware = append(c.middleware, mw...)
		return nil
	}
}

// WithTransactionPooler tells the Inbox that its pool connects through a
// connection pooler in transaction mode (PgBouncer with pool_mode =
// transaction, and poolers like it), where consecutive transactions of one
// client connection may run on different server connections. The Inbox
// then uses no named prepared statements, whatever the pool's
// DefaultQueryExecMode: pgx's statement cache would otherwise fail with
// "prepared statement ... already exists" or "does not exist". It needs
// nothing else of the pool: every exec mode works. For wakeups, give a
// direct connection with [WithListenConfig] or use [WithoutNotify];
// without either, the Inbox finds that LISTEN does not work through the
// pooler, logs a warning and polls. See the package documentation,
// "Connection poolers".
func WithTransactionPooler() Option {
	return func(c *config) error {
		c.pooler = true
		return nil
	}
}

// WithListenConfig gives the connection on which workers LISTEN for
// notifications of new rows, instead of one opened with the pool's
// settings. Behind a transaction-mode pooler, point it past the pooler,
// straight at PostgreSQL: notifications sent through the pooler (as Set
// sends them) still reach it. The Inbox keeps one such connection open per
// running Inbox and reopens it when it breaks.
func WithListenConfig(cfg *pgx.ConnConfig) Option {
	return func(c *config) error {
		if cfg == nil {
			return invalid("WithListenConfig", "nil", "config must not be nil; parse one with pgx.ParseConfig")
		}
		c.listenConfig = cfg.Copy()
		return nil
	}
}

// WithMaxBacklog bounds the backlog of the listed event types, or of
// every registered event type when none is listed, to n rows: the rows
// not finished (pending, failed and waiting for a retry, or in progress),
// counted over all handler keys of the type, so an event of a type with
// two handlers is two rows. While the backlog of a type is at or over n,
// Set, SetTx and their WithResult forms refuse every call that holds a
// record of that type: they write nothing of the call and return a
// [*BacklogFullError], which wraps [ErrBacklogFull]. That is temporary:
// leave the message unacknowledged and retry it later (the broker
// adapters retry the batch with a backoff and fetch nothing new
// meanwhile) while the workers bring the backlog down. A redelivery of a
// message stored already is refused too, as the check cannot tell it
// from a new one. Calls holding only records of other types pay nothing.
//
// The option may be given several times; a later one overrides an earlier
// one for the types it covers. n must be at least 1, and each listed type
// a valid event type with a handler in the registry: [New] fails with
// [ErrInvalidConfig] otherwise.
//
// The check runs no query per Set: it compares the limit with a figure
// the Client keeps, read from the table's own counters (as [Admin.Stats]
// reads them, never by counting rows) once it is 500 ms old, or 50 ms old
// when it says the backlog is full, by one Set at a time while the others
// use the figure as it is, and increased by the rows of every Set it lets
// through. How exact it is:
//
//   - Through one Client (the Client of one Inbox, shared by any number
//     of goroutines), concurrent Sets take the backlog over the limit by
//     less than the rows of the Sets running at once. A Set passes only
//     while the figure is under the limit, and the figure falls short of
//     the backlog by at most the rows of the Sets that were running (for
//     SetTx: whose transactions had not committed) when the counters were
//     last read. With one Set at a time, the last Set to pass takes the
//     backlog over the limit by at most its own rows.
//   - Sets through other Clients (other processes, or other Inboxes of
//     this one) reach the figure only when it is read again: each of them
//     may add, beyond that, what it stores in 500 ms (50 ms once the
//     figure is at the limit).
//   - The figure falls only when it is read again: after the workers
//     brought the backlog under the limit, Sets may be refused for about
//     50 ms more. Records that turn out to be duplicates, and Sets that
//     fail or roll back, count in the figure until then too. So one
//     Client stores at most about n rows per 50 ms while the backlog is
//     near the limit, however fast the workers drain it: give a limit
//     well above that.
//
// It is a bound on the growth of the backlog, not an exact cap.
//
// If the counters cannot be read (a statement timeout, a role that may
// not read them), the Set goes ahead unchecked, a warning is logged, and
// the next reading is tried 500 ms later: backpressure protects the
// workers from a flood, and should not turn a problem with the counters
// into refusing every message. While the database is unreachable, Set
// fails anyway.
//
// A refused Set is reported to [Hooks].OnSet with its error.
func WithMaxBacklog(n int, eventTypes ...string) Option {
	types := slices.Clone(eventTypes)
	return func(c *config) error {
		name := fmt.Sprint(n)
		for _, t := range types {
			name += fmt.Sprintf(", %q", t)
		}
		if n < 1 {
			return invalid("WithMaxBacklog", name, "the limit must be at least 1")
		}
		for _, t := range types {
			if err := validateName("event type", t); err != nil {
				return invalid("WithMaxBacklog", name, err.Error())
			}
		}
		c.backlogLimits = append(c.backlogLimits, backlogLimit{n: int64(n), eventTypes: types})
		return nil
	}
}

func newConfig(opts []Option) (config, error) {
	c := defaultConfig()
	for i, opt := range opts {
		if opt == nil {
			return c, fmt.Errorf("%w: option %d is nil", ErrInvalidConfig, i)
		}
		if err := opt(&c); err != nil {
			return c, err
		}
	}
	return c, nil
}
