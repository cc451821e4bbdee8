package inbox

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Inbox stores received events and processes them with the registered
// handlers. Create it with [New], store events through [Inbox.Client], and
// run workers with [Inbox.Start] and [Inbox.Stop]. Any number of Inboxes, in
// any number of processes, may share one table.
type Inbox struct {
	db     db
	cfg    config
	routes *routes
	client *Client
	id     uuid.UUID

	mu      sync.Mutex
	started bool
	w       *worker
}

// New checks its arguments and returns an Inbox that is not yet running.
// It fails with an error wrapping [ErrInvalidConfig] for a nil pool or a bad
// option, and [ErrInvalidRegistry] for a registry it cannot use. New does
// not touch the database.
func New(pool *pgxpool.Pool, registry *Registry, opts ...Option) (*Inbox, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil; create one with pgxpool.New", ErrInvalidConfig)
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	rt, err := registry.snapshot(&cfg)
	if err != nil {
		return nil, err
	}
	d := newDB(pool, cfg.pooler)
	ib := &Inbox{db: d, cfg: cfg, routes: rt, id: uuid.New()}
	ib.client = &Client{db: d, routes: rt, unknown: cfg.unknown, conflicts: cfg.conflicts, notify: cfg.notify, logger: cfg.logger, hooks: cfg.hooks, propagator: cfg.propagator}
	if ib.client.backlog, err = newBacklog(&cfg, rt, d); err != nil {
		return nil, err
	}
	return ib, nil
}

// Client returns the client that stores records in this inbox.
func (i *Inbox) Client() *Client { return i.client }

// ID returns the id this Inbox's workers use in leases and in [Inbox.Workers].
func (i *Inbox) ID() uuid.UUID { return i.id }

// Start migrates the schema (unless [WithoutMigrations] was given), then
// starts the workers and returns. ctx bounds start-up only: the workers run
// until [Inbox.Stop]. An Inbox starts once; a second call returns
// [ErrAlreadyStarted]. If Start fails it may be called again.
func (i *Inbox) Start(ctx context.Context) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.started {
		return ErrAlreadyStarted
	}
	if i.cfg.migrate {
		if err := Migrate(ctx, i.db.pool); err != nil {
			return err
		}
	} else if err := checkSchema(ctx, i.db, "drop WithoutMigrations"); err != nil {
		return fmt.Errorf("inbox: start: %w", err)
	}
	if err := i.ensureProgressIndex(ctx); err != nil {
		return fmt.Errorf("inbox: start: %w", err)
	}
	w := newWorker(i)
	if err := w.start(ctx); err != nil {
		return fmt.Errorf("inbox: start: %w", err)
	}
	i.started, i.w = true, w
	i.cfg.logger.Info("inbox: started", "worker", i.id, "concurrency", i.cfg.concurrency,
		"batch_size", i.cfg.batchSize, "notify", i.cfg.notify)
	return nil
}

// Stop stops the workers gracefully. It stops claiming, hands rows that
// were claimed but not started back to the queue (their attempt is not
// counted), and waits for running handlers, writing their results even if
// ctx is cancelled meanwhile. It returns nil once nothing of the Inbox is
// left running.
//
// If ctx ends first, Stop cancels the running handlers' contexts and
// returns ctx's error; their rows are left to their leases and will be
// claimed again once the leases run out. Stop on an Inbox that is not
// running returns nil.
//
// Stop called from one of the Inbox's own handlers, middleware or
// callbacks would wait for itself: it returns [ErrStopInHandler] at once
// and the Inbox keeps running.
func (i *Inbox) Stop(ctx context.Context) error {
	i.mu.Lock()
	w := i.w
	if w != nil && w.inGuest(ctx) {
		i.mu.Unlock()
		return ErrStopInHandler
	}
	i.w = nil
	i.mu.Unlock()
	if w == nil {
		return nil
	}
	err := w.stop(ctx)
	i.cfg.logger.Info("inbox: stopped", "worker", i.id, "error", err)
	return err
}

// Lookup returns the rows of one event, one per handler key, ordered by
// key. It returns an empty slice for an unknown event.
func (i *Inbox) Lookup(ctx context.Context, eventID uuid.UUID) ([]RecordState, error) {
	rows, err := i.db.query(ctx, lookupSQL, pgUUID(eventID))
	if err != nil {
		return nil, fmt.Errorf("inbox: lookup %s: %w", eventID, err)
	}
	states, err := pgx.CollectRows(rows, scanState)
	if err != nil {
		return nil, fmt.Errorf("inbox: lookup %s: %w", eventID, err)
	}
	return states, nil
}

// Counts returns the number of rows in each status. Every status is
// present in the map, zero or not. The counts come from the counters the
// table keeps (see [Admin.Stats]): exact, and cheap however many rows are
// kept.
func (i *Inbox) Counts(ctx context.Context) (map[Status]int, error) {
	if err := i.Admin().fold(ctx); err != nil {
		return nil, fmt.Errorf("inbox: counts: %w", err)
	}
	rows, err := i.db.query(ctx, countsSQL)
	if err != nil {
		return nil, fmt.Errorf("inbox: counts: %w", err)
	}
	counts := make(map[Status]int, 5)
	for _, s := range Statuses() {
		counts[s] = 0
	}
	var status string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&status, &n}, func() error {
		counts[Status(status)] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("inbox: counts: %w", err)
	}
	return counts, nil
}

// OldestDue returns how long the oldest due row has been waiting: zero when
// nothing is due. A value that keeps growing while [Inbox.Workers] lists
// live workers means work is slow; with no live workers, nothing runs.
func (i *Inbox) OldestDue(ctx context.Context) (time.Duration, error) {
	var secs *float64
	if err := i.db.queryRow(ctx, oldestDueSQL).Scan(&secs); err != nil {
		return 0, fmt.Errorf("inbox: oldest due: %w", err)
	}
	if secs == nil {
		return 0, nil
	}
	return time.Duration(*secs * float64(time.Second)), nil
}

// Worker describes a running Inbox, as recorded by its heartbeat.
type Worker struct {
	ID         uuid.UUID `json:"id"`
	Hostname   string    `json:"hostname"`
	PID        int       `json:"pid"`
	EventTypes []string  `json:"event_types"`
	StartedAt  time.Time `json:"started_at"`
	// BeatAt is the worker's latest heartbeat. A live worker beats at least
	// once per lease.
	BeatAt time.Time `json:"beat_at"`
}

// Workers lists the live workers on this inbox table, from any process:
// those whose latest heartbeat has not expired. An empty list means no
// worker is running.
func (i *Inbox) Workers(ctx context.Context) ([]Worker, error) {
	return workers(ctx, i.db)
}

func workers(ctx context.Context, d db) ([]Worker, error) {
	rows, err := d.query(ctx, workersSQL)
	if err != nil {
		return nil, fmt.Errorf("inbox: workers: %w", err)
	}
	ws, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Worker, error) {
		var w Worker
		var id pgtype.UUID
		err := row.Scan(&id, &w.Hostname, &w.PID, &w.EventTypes, &w.StartedAt, &w.BeatAt)
		w.ID = id.Bytes
		return w, err
	})
	if err != nil {
		return nil, fmt.Errorf("inbox: workers: %w", err)
	}
	return ws, nil
}
