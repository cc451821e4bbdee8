package inbox

import (
	"fmt"
	"time"
)

// HandlerOption gives one handler a setting of its own at registration, with
// [Registry.Handle]. A handler without it uses the Inbox's setting.
type HandlerOption func(*handlerConfig) error

// handlerConfig is a handler's own settings; zero values defer to the
// Inbox's.
type handlerConfig struct {
	timeout                 time.Duration
	maxAttempts             int
	backoffBase, backoffMax time.Duration
	concurrency             int
	globalLimit             int
	movesOn                 bool
}

func handlerInvalid(option string, value any, rule string) error {
	return fmt.Errorf("%s(%v): %s", option, value, rule)
}

// HandlerTimeout sets how long one attempt of this handler may run,
// overriding [WithHandlerTimeout] and the handler's Timeout method.
func HandlerTimeout(d time.Duration) HandlerOption {
	return func(c *handlerConfig) error {
		if d <= 0 {
			return handlerInvalid("HandlerTimeout", d, "must be positive")
		}
		c.timeout = d
		return nil
	}
}

// HandlerMaxAttempts sets how many attempts this handler's rows get before
// they are dead, overriding [WithMaxRetryAttempt]. The limit is stored with
// each row when it is stored, so every worker applies the same one. A value
// above [MaxAttempts] counts as MaxAttempts.
func HandlerMaxAttempts(n int) HandlerOption {
	return func(c *handlerConfig) error {
		if n < 1 {
			return handlerInvalid("HandlerMaxAttempts", n, "must be at least 1")
		}
		c.maxAttempts = min(n, MaxAttempts)
		return nil
	}
}

// HandlerBackoff sets the pause before this handler's next attempt after a
// failure, overriding [WithRetryBackoff]; the formula is the same.
func HandlerBackoff(base, max time.Duration) HandlerOption {
	return func(c *handlerConfig) error {
		if base <= 0 {
			return handlerInvalid("HandlerBackoff", base, "base must be positive")
		}
		if max < base {
			return handlerInvalid("HandlerBackoff", max, "max must not be below base")
		}
		c.backoffBase, c.backoffMax = base, max
		return nil
	}
}

// HandlerConcurrency limits how many attempts of this handler one Inbox runs
// at once, within [WithConcurrency]: for a downstream that allows only a few
// calls at a time. The Inbox then claims at most twice the limit of this
// handler's rows ahead, so its backlog does not hold up other handlers.
func HandlerConcurrency(n int) HandlerOption {
	return func(c *handlerConfig) error {
		if n < 1 || n > 100000 {
			return handlerInvalid("HandlerConcurrency", n, "must be between 1 and 100000")
		}
		c.concurrency = n
		return nil
	}
}

// HandlerGlobalConcurrency limits how many rows of this handler key are in
// progress at once across every Inbox working on the same tables, in every
// process: for a downstream API that allows only n concurrent calls. It is
// exact: the claims of a limited handler key take turns (a transaction
// advisory lock per key), and each counts the key's rows in progress
// before it claims. A row counts from its claim until its result is
// written, or its lease expires and it is claimed again; rows a worker
// claimed ahead and has not started yet count too, so keep
// [WithBatchSize] small beside n for an even spread across instances.
// Register the same n for every event type the key handles: an Inbox
// applies the smallest it was given. The claims count through a partial
// index of the rows in progress, which the first Inbox with a limited
// handler builds when it starts (CONCURRENTLY: Start waits for the build;
// Sets and workers go on); every claim and result write pays for it from
// then on, so it is not there until a limit is used.
func HandlerGlobalConcurrency(n int) HandlerOption {
	return func(c *handlerConfig) error {
		if n < 1 || n > 1000000 {
			return handlerInvalid("HandlerGlobalConcurrency", n, "must be between 1 and 1000000")
		}
		c.globalLimit = n
		return nil
	}
}

// HandlerMovesOnPastDead makes a dead row of this handler leave its
// ordering key's order ([Record.WithOrderingKey]), so that the key's next
// row runs. Without it, the default, a dead row parks its key: the key's
// later rows wait until an operator replays the dead row ([Admin.Replay],
// which keeps the order) or skips it ([Admin.SkipParked]). Parking is the
// default because the point of ordering is that a later event must not
// apply before an earlier one: a handler whose events are independent
// enough to skip one chooses to. A dead row that left the order is
// replayed on its own, without waiting for its key.
func HandlerMovesOnPastDead() HandlerOption {
	return func(c *handlerConfig) error {
		c.movesOn = true
		return nil
	}
}
