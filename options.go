package inbox

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
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
	// ([WithRetention]). Deduplication holds only while rows are kept.
	DefaultRetentionDays = 60
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
	// rows every third of it, so a row whose worker died is claimable again
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
	// last attempt's worker died.
	Err error
}

// DeadCallback is called once for each row that becomes dead, after the
// dead status is committed. Calls are made one at a time from one goroutine;
// a slow callback delays later ones, not processing.
type DeadCallback func(ctx context.Context, rec DeadRecord)

// ErrorCallback is called with errors of the inbox's own machinery (the
// database unreachable, a lease lost, a result that could not be written).
// Handler failures are not reported here: they are recorded in their rows.
// The worker keeps going after every such error.
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

// WithMaxRetryAttempt sets how many attempts a row gets before it is dead.
func WithMaxRetryAttempt(maxAttempt int) Option {
	return func(c *config) error {
		c.maxAttempts = maxAttempt
		if maxAttempt < 1 {
			return invalid("WithMaxRetryAttempt", maxAttempt, "must be at least 1")
		}
		return nil
	}
}

// WithRetention sets retention: every eraseInterval, done and dead rows
// last changed more than windowDays days ago are deleted. Rows that are
// not finished are never deleted. windowDays is at most [MaxRetentionDays].
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
		c.onDead = callback
		return nil
	}
}

// OnErrorCallback sets the function called with the inbox's own errors.
func OnErrorCallback(callback ErrorCallback) Option {
	return func(c *config) error {
		if callback == nil {
			return invalid("OnErrorCallback", "nil", "callback must not be nil")
		}
		c.onError = callback
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
// worker holds at most concurrency + batch size rows at once.
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
// and workers only poll. Use it behind a transaction-mode connection pooler,
// which cannot LISTEN.
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
// Running workers renew their leases every third of it; a row whose worker
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
