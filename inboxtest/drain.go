package inboxtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// Defaults of a [Runner] and of [Runner.Drain].
const (
	// IterationRate is the poll interval a Runner gives its Inboxes
	// ([inbox.WithIterationRate]) unless its options set another: rows that
	// become due without a notification (a retry scheduled by another
	// worker, a lease that ran out) are found within it.
	IterationRate = 20 * time.Millisecond
	// DefaultRetryWindow is how far ahead Drain looks for retries, unless
	// [RetryWindow] says otherwise: Drain waits for an unfinished row whose
	// next attempt is due within this time. It is below the shortest first
	// retry of the inbox's default backoff (half of
	// [inbox.DefaultRetryBackoff]), so under the default backoff a failing
	// row is left failed after its first attempt, and under a backoff
	// whose maximum is below it, retried until it is done or dead.
	DefaultRetryWindow = 250 * time.Millisecond
	// DefaultDrainTimeout bounds a Drain whose context has no deadline.
	DefaultDrainTimeout = time.Minute
)

// checkInterval is the pause between Drain's checks of the table.
const checkInterval = 5 * time.Millisecond

// unfinished are the statuses of rows that may still run.
var unfinished = []inbox.Status{inbox.Null, inbox.Progress, inbox.Failed}

// Runner runs the handlers of a registry on demand, for tests: records
// stored with [Runner.Client] are processed by [Runner.Drain], which
// returns once there is nothing left to run and no worker running.
//
// Each Drain starts a new [inbox.Inbox] built with [inbox.New] from the
// Runner's pool, registry and options, so it sees the registry as it is
// then. A Runner is safe for concurrent use; Drains running at once run a
// worker each.
type Runner struct {
	pool     *pgxpool.Pool
	registry *inbox.Registry
	opts     []inbox.Option
	client   *inbox.Client
	admin    *inbox.Admin
}

// NewRunner checks its arguments as [inbox.New] does and returns a Runner.
// opts are the Inbox's options, as in production; before them come
// [inbox.WithIterationRate]([IterationRate]) and a logger of warnings and
// errors to standard error, which opts may override. NewRunner does not
// touch the database; the inbox's tables must exist before the Client
// stores records: [NewPool] creates them, or call [inbox.Migrate].
func NewRunner(pool *pgxpool.Pool, registry *inbox.Registry, opts ...inbox.Option) (*Runner, error) {
	all := append([]inbox.Option{
		inbox.WithIterationRate(IterationRate),
		inbox.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))),
	}, opts...)
	ib, err := inbox.New(pool, registry, all...)
	if err != nil {
		return nil, fmt.Errorf("inboxtest: %w", err)
	}
	return &Runner{pool: pool, registry: registry, opts: all, client: ib.Client(), admin: ib.Admin()}, nil
}

// Client returns the client that stores records for the Runner's
// handlers, as [inbox.Inbox.Client] does.
func (r *Runner) Client() *inbox.Client { return r.client }

// Admin returns an [inbox.Admin] over the Runner's inbox table.
func (r *Runner) Admin() *inbox.Admin { return r.admin }

// Result is what [Runner.Drain] did and left.
type Result struct {
	// Rounds counts the Inboxes Drain started and stopped: 1, unless rows
	// became due just as a worker stopped.
	Rounds int
	// Counts are the rows in each status when Drain returned; every status
	// is present.
	Counts map[inbox.Status]int
	// Unfinished are the rows not done or dead that Drain left, ordered by
	// event id and handler key: rows whose next attempt is due more than
	// the retry window after Drain's last check, rows of a paused handler
	// ([inbox.Admin.Pause]) and rows no handler of the registry runs.
	Unfinished []inbox.RecordState
}

// DrainOption changes how [Runner.Drain] works.
type DrainOption func(*drainConfig)

type drainConfig struct {
	window time.Duration
}

// RetryWindow sets how far ahead Drain looks for retries: it waits for an
// unfinished row whose next attempt is due within d of its check (the
// default is [DefaultRetryWindow]). A row whose next attempt is later is
// left failed, but Drain does not stop the worker from running a retry
// that comes due before it has stopped: for a result that does not depend
// on timing, let the backoff's maximum be below d (every retry runs in
// this Drain) or half its base be well above d (none does).
func RetryWindow(d time.Duration) DrainOption {
	return func(c *drainConfig) { c.window = max(d, 0) }
}

// Drain runs the Runner's handlers until nothing is left for them to do,
// then returns with no worker running. In each round it starts an Inbox,
// waits until the table holds no row that Drain waits for, stops the
// Inbox (which writes the results of the handlers still running) and
// checks again; if rows to wait for appeared meanwhile, another round
// starts.
//
// Drain waits for every row of a (event type, handler key) pair the
// registry runs and no pause covers that is
//
//   - pending or failed and due within the retry window ([RetryWindow]) of
//     the check: retries with a short backoff run in the same Drain, until
//     the row is done or dead;
//   - in progress: held by a worker, Drain's own or another one (a row
//     whose worker died is run again once its lease runs out).
//
// So when Drain returns nil, every such row that was due, or became due
// within the window while Drain ran, has run to done, dead or a later
// retry, and the results are stored: the test may assert on the table.
// Records stored by other goroutines while Drain runs may or may not have
// run.
//
// Drain also ends when ctx does, or after [DefaultDrainTimeout] if ctx has
// no deadline: a handler that always asks to retry soon
// ([inbox.RetryAfter]), or a row held by a worker that never finishes it,
// would keep it waiting. It then stops its Inbox at once, as
// [inbox.Inbox.Stop] does when its context ends (the running handlers'
// contexts are cancelled and their rows stay in progress until their
// leases run out) and returns an error wrapping ctx's, which lists rows
// it was waiting for. A handler that ignores its context may outlive
// Drain, as it may outlive Stop. With an error, the Result holds Rounds
// only.
func (r *Runner) Drain(ctx context.Context, opts ...DrainOption) (Result, error) {
	cfg := drainConfig{window: DefaultRetryWindow}
	for _, opt := range opts {
		opt(&cfg)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, DefaultDrainTimeout,
			fmt.Errorf("gave up after %v (DefaultDrainTimeout)", DefaultDrainTimeout))
		defer cancel()
	}
	var res Result
	var last survey // the latest check that found rows to wait for
	for {
		ib, err := inbox.New(r.pool, r.registry, r.opts...)
		if err != nil {
			return res, fmt.Errorf("inboxtest: drain: %w", err)
		}
		if err := ib.Start(ctx); err != nil {
			return res, r.failed(ctx, res, fmt.Errorf("start: %w", err), last)
		}
		res.Rounds++
		s, waitErr := r.settle(ctx, cfg.window)
		stopErr := ib.Stop(ctx) // at once if ctx has ended
		if waitErr != nil {
			return res, r.failed(ctx, res, waitErr, s)
		}
		if stopErr != nil {
			return res, r.failed(ctx, res, fmt.Errorf("stop: %w", stopErr), s)
		}
		// The Inbox has stopped: unless others write to the table, this
		// check reads a table at rest.
		s, err = r.survey(ctx, cfg.window)
		if err != nil {
			return res, r.failed(ctx, res, err, last)
		}
		if len(s.waiting) > 0 {
			last = s
			continue
		}
		res.Unfinished = s.left
		if res.Counts, err = counts(ctx, r.admin); err != nil {
			return res, fmt.Errorf("inboxtest: drain: %w", err)
		}
		return res, nil
	}
}

// settle checks the table every checkInterval until it holds no row to
// wait for, or ctx ends. It returns the last survey.
func (r *Runner) settle(ctx context.Context, window time.Duration) (survey, error) {
	tick := time.NewTicker(checkInterval)
	defer tick.Stop()
	var last survey
	for {
		s, err := r.survey(ctx, window)
		if ctx.Err() != nil {
			return last, context.Cause(ctx) // err, if any, says the same
		}
		if err != nil {
			return last, err
		}
		if len(s.waiting) == 0 {
			return s, nil
		}
		last = s
		select {
		case <-tick.C:
		case <-ctx.Done():
			return last, context.Cause(ctx)
		}
	}
}

// failed wraps err, the reason Drain gives up, with the rows it was
// waiting for according to its last survey.
func (r *Runner) failed(ctx context.Context, res Result, err error, s survey) error {
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%w: %w", err, ctx.Err())
	}
	var rows string
	if n := len(s.waiting); n > 0 {
		rows = fmt.Sprintf("; rows still to run or running (%d):\n%s", n, describeRows(s.waiting, 10))
	}
	return fmt.Errorf("inboxtest: drain (round %d): %w%s", res.Rounds, err, rows)
}

// survey is what one check of the table found among the rows not done or
// dead.
type survey struct {
	waiting []inbox.RecordState // rows Drain waits for
	left    []inbox.RecordState // rows Drain leaves unfinished
}

// survey classifies the unfinished rows. Up to inbox.MaxListLimit of
// them are read in one statement, a consistent snapshot: a row moving
// from pending to in progress to failed cannot be missed. More are read
// page by page, which is exact on a table at rest (as after a Stop) but
// may miss a row that changes while a worker runs: Drain then stops too
// early, and its check after Stop starts another round.
func (r *Runner) survey(ctx context.Context, window time.Duration) (survey, error) {
	var s survey
	var rows []inbox.RecordState
	for after := ""; ; {
		page, err := r.admin.List(ctx, inbox.Filter{Statuses: unfinished}, after, inbox.MaxListLimit)
		if err != nil {
			return s, err
		}
		rows = append(rows, page.Rows...)
		if after = page.Next; after == "" {
			break
		}
	}
	if len(rows) == 0 {
		return s, nil
	}
	pauses, err := r.admin.Pauses(ctx)
	if err != nil {
		return s, err
	}
	// The server's clock, read after the rows: a row due by then is due.
	var now time.Time
	if err := r.pool.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return s, fmt.Errorf("read the server's clock: %w", err)
	}
	pairs := r.pairs()
	horizon := now.Add(window)
	for _, row := range rows {
		switch {
		case !pairs[pair{row.EventType, row.HandlerKey}] || paused(pauses, row):
			s.left = append(s.left, row)
		case row.Status == inbox.Progress:
			s.waiting = append(s.waiting, row)
		case row.NextAttemptAt == nil || !row.NextAttemptAt.After(horizon):
			s.waiting = append(s.waiting, row)
		default:
			s.left = append(s.left, row)
		}
	}
	byKey := func(a, b inbox.RecordState) int {
		if c := strings.Compare(a.EventID.String(), b.EventID.String()); c != 0 {
			return c
		}
		return strings.Compare(a.HandlerKey, b.HandlerKey)
	}
	slices.SortFunc(s.waiting, byKey)
	slices.SortFunc(s.left, byKey)
	return s, nil
}

type pair struct{ eventType, key string }

// pairs returns the (event type, handler key) pairs of the registry.
func (r *Runner) pairs() map[pair]bool {
	out := map[pair]bool{}
	for t, hs := range r.registry.Handlers() {
		for _, h := range hs {
			out[pair{t, h.Key()}] = true
		}
	}
	return out
}

// paused reports whether a pause covers the row's pair.
func paused(pauses []inbox.Pause, row inbox.RecordState) bool {
	for _, p := range pauses {
		if (p.EventType == "" || p.EventType == row.EventType) && (p.HandlerKey == "" || p.HandlerKey == row.HandlerKey) {
			return true
		}
	}
	return false
}

// counts returns the rows in each status, every status present.
func counts(ctx context.Context, admin *inbox.Admin) (map[inbox.Status]int, error) {
	out := make(map[inbox.Status]int, len(inbox.Statuses()))
	for _, s := range inbox.Statuses() {
		n, err := admin.Count(ctx, inbox.Filter{Statuses: []inbox.Status{s}})
		if err != nil {
			return nil, err
		}
		out[s] = int(n)
	}
	return out, nil
}
