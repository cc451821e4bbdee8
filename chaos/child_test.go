package chaos_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// roleEnv carries a child process's childConfig as JSON; TestMain then
// runs that role instead of the tests.
const roleEnv = "INBOX_CHAOS_ROLE"

// The child roles.
const (
	roleWorker = "worker"
	roleWriter = "writer"
)

// The event types and handler keys. Each event type has a plain handler
// and a transactional one, so each event has two rows. The ledger event
// type, ordered, has its own (see ledger_test.go).
const (
	typeOrder   = "order"
	typePayment = "payment"
	keyPlain    = "plain"
	keyTx       = "tx"
)

// Worker settings shared by every worker process.
const (
	workerLease       = time.Second
	workerIteration   = 200 * time.Millisecond
	workerConcurrency = 20
	workerBatchSize   = 50
	workerPoolConns   = 12
	workerBackoffMin  = 10 * time.Millisecond
	workerBackoffMax  = 200 * time.Millisecond
	workerHandlerTime = 5 * time.Second
)

// childConfig tells a child process what to do.
type childConfig struct {
	Role string `json:"role"`
	Name string `json:"name"`
	URL  string `json:"url"`

	// Worker.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// Writer: it sends the events i of eventIDs(Seed, Events) with
	// i % Writers == Writer, BatchSize new ones per Set, spread over Duration.
	Writer      int           `json:"writer,omitempty"`
	Writers     int           `json:"writers,omitempty"`
	Seed        uint64        `json:"seed,omitempty"`
	Events      int           `json:"events,omitempty"`
	BatchSize   int           `json:"batch_size,omitempty"`
	Duration    time.Duration `json:"duration,omitempty"`
	AckedPath   string        `json:"acked_path,omitempty"`
	SummaryPath string        `json:"summary_path,omitempty"`
}

// writerSummary is what a writer reports when it has sent everything.
type writerSummary struct {
	Events     int           `json:"events"`
	Duplicates int           `json:"duplicates"`
	Batches    int           `json:"batches"`
	Retries    int           `json:"retries"`
	Elapsed    time.Duration `json:"elapsed"`
}

// TestMain runs a child process's role instead of the tests when roleEnv
// is set: TestChaos starts its worker and writer processes that way.
func TestMain(m *testing.M) {
	if spec := os.Getenv(roleEnv); spec != "" {
		if err := runChild(spec); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild is the body of TestChaos's child processes: a worker process or
// a writer process, as spec (a childConfig in JSON) says.
func runChild(spec string) error {
	var cfg childConfig
	if err := json.Unmarshal([]byte(spec), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "chaos child failed: parse %s: %v\n", roleEnv, err)
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).
		With("proc", cfg.Name, "pid", os.Getpid())
	var err error
	switch cfg.Role {
	case roleWorker:
		err = runWorker(cfg, log)
	case roleWriter:
		err = runWriter(cfg, log)
	default:
		err = fmt.Errorf("unknown role %q", cfg.Role)
	}
	if err != nil {
		log.Error("chaos child failed", "error", err)
	}
	return err
}

// newPool returns a pool that does not connect until used, so it can be
// created while PostgreSQL is down.
func newPool(url string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	cfg.ConnConfig.ConnectTimeout = 3 * time.Second
	return pgxpool.NewWithConfig(context.Background(), cfg)
}

// eventIDs returns n event ids derived from seed: every process computes
// the same list.
func eventIDs(seed uint64, n int) []uuid.UUID {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	src := rand.NewChaCha8(key)
	ids := make([]uuid.UUID, n)
	for i := range ids {
		id, err := uuid.NewRandomFromReader(src)
		if err != nil {
			panic(err) // ChaCha8.Read never fails
		}
		ids[i] = id
	}
	return ids
}

// eventType is the event type of an id.
func eventType(id uuid.UUID) string {
	switch {
	case isLedger(id):
		return typeLedger
	case id[15]&1 == 1:
		return typePayment
	default:
		return typeOrder
	}
}

// handlerKeys returns the handler keys of an event type.
func handlerKeys(eventType string) []string {
	if eventType == typeLedger {
		return []string{keyLedgerPlain, keyLedgerTx}
	}
	return []string{keyPlain, keyTx}
}

// alwaysFails reports whether the plain handler of this event always
// fails: payments whose id starts with a byte 0x00..0x03, about 1 event in
// 128. Only those rows may end dead.
func alwaysFails(id uuid.UUID) bool {
	return eventType(id) == typePayment && id[0] <= 0x03
}

// registry builds the handlers. The payload is the event id as text
// (ledger events: see ledgerHandlers).
//
// The plain handler records each run in plain_runs (at least once: a run
// whose result was lost runs again). The transactional handler inserts its
// effect in the transaction that marks its row done, so effects must hold
// exactly one row per event: neither table has a unique constraint, so a
// double application would show.
func registry(pool *pgxpool.Pool) *inbox.Registry {
	reg := inbox.NewRegistry()
	for _, et := range []string{typeOrder, typePayment} {
		plain := inbox.HandlerFunc(keyPlain, func(ctx context.Context, payload []byte) error {
			id, err := uuid.ParseBytes(payload)
			if err != nil {
				return fmt.Errorf("payload %q: %w", payload, err)
			}
			if alwaysFails(id) {
				return errors.New("chaos: this handler always fails for this event")
			}
			_, err = pool.Exec(ctx, `INSERT INTO plain_runs (event_id, handler_key, pid) VALUES ($1, $2, $3)`,
				id, keyPlain, os.Getpid())
			return err
		})
		tx := inbox.TxHandlerFunc(keyTx, func(ctx context.Context, tx pgx.Tx, payload []byte) error {
			id, err := uuid.ParseBytes(payload)
			if err != nil {
				return fmt.Errorf("payload %q: %w", payload, err)
			}
			_, err = tx.Exec(ctx, `INSERT INTO effects (event_id, handler_key, pid) VALUES ($1, $2, $3)`,
				id, keyTx, os.Getpid())
			return err
		})
		reg.On(et, plain, tx)
	}
	plain, tx := ledgerHandlers(pool)
	reg.On(typeLedger, plain, tx)
	return reg
}

// runWorker runs an Inbox until SIGTERM, then stops it gracefully. It
// retries Start while PostgreSQL is down.
func runWorker(cfg childConfig, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	pool, err := newPool(cfg.URL, workerPoolConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	ib, err := inbox.New(pool, registry(pool),
		inbox.WithLease(workerLease),
		inbox.WithIterationRate(workerIteration),
		inbox.WithMaxRetryAttempt(cfg.MaxAttempts),
		inbox.WithRetryBackoff(workerBackoffMin, workerBackoffMax),
		inbox.WithConcurrency(workerConcurrency),
		inbox.WithBatchSize(workerBatchSize),
		inbox.WithHandlerTimeout(workerHandlerTime),
		inbox.WithoutMigrations(),
		inbox.WithLogger(log),
	)
	if err != nil {
		return err
	}
	for {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := ib.Start(sctx)
		cancel()
		if err == nil {
			break
		}
		log.Warn("chaos: start failed; retrying", "error", err)
		select {
		case <-ctx.Done():
			return nil // told to stop before it could start
		case <-time.After(200 * time.Millisecond):
		}
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ib.Stop(sctx); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	return nil
}

// runWriter sends its share of the events, paced over cfg.Duration, with
// 10 % duplicates of ids it sent in earlier batches. Each batch is
// shuffled, but for its new ledger events, which keep the writer's order:
// each of the writer's ordering keys gets its events in increasing
// sequence. A failed Set is retried, the same batch, until it succeeds.
// Each acknowledged batch's new ids are appended to cfg.AckedPath; the
// summary goes to cfg.SummaryPath.
func runWriter(cfg childConfig, log *slog.Logger) error {
	start := time.Now()
	pool, err := newPool(cfg.URL, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	// The attempt limit is stored with each row, so the writers set it.
	ib, err := inbox.New(pool, registry(pool), inbox.WithLogger(log), inbox.WithMaxRetryAttempt(cfg.MaxAttempts))
	if err != nil {
		return err
	}
	client := ib.Client()

	ids := eventIDs(cfg.Seed, cfg.Events)
	plan := ledgerPlan(ids, cfg.Writers)
	var mine []uuid.UUID
	for i, id := range ids {
		if i%cfg.Writers == cfg.Writer {
			mine = append(mine, id)
		}
	}
	acked, err := os.Create(cfg.AckedPath)
	if err != nil {
		return err
	}
	defer acked.Close()

	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(cfg.Writer)+1))
	batches := (len(mine) + cfg.BatchSize - 1) / cfg.BatchSize
	interval := cfg.Duration / time.Duration(max(batches, 1))
	dupTarget := len(mine) / 10
	var sum writerSummary
	for b := range batches {
		if wait := time.Until(start.Add(time.Duration(b) * interval)); wait > 0 {
			time.Sleep(wait) // pacing, not synchronisation
		}
		fresh := mine[b*cfg.BatchSize : min((b+1)*cfg.BatchSize, len(mine))]
		sent := mine[:b*cfg.BatchSize]
		recs := make([]*inbox.Record, 0, len(fresh)+len(fresh)/5)
		place := make(map[uuid.UUID]int, len(fresh))
		for i, id := range fresh {
			recs = append(recs, newRecord(id, plan))
			place[id] = i
		}
		if b > 0 {
			// Spread dupTarget duplicates over batches 1..batches-1.
			ndup := dupTarget*b/max(batches-1, 1) - sum.Duplicates
			for range ndup {
				recs = append(recs, newRecord(sent[rng.IntN(len(sent))], plan))
			}
			sum.Duplicates += ndup
		}
		rng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
		inWriterOrder(recs, place)
		retries, err := setUntilStored(client, recs, log)
		sum.Retries += retries
		if err != nil {
			return fmt.Errorf("batch %d: %w", b, err)
		}
		buf := make([]byte, 0, 16*len(fresh))
		for _, id := range fresh {
			buf = append(buf, id[:]...)
		}
		if _, err := acked.Write(buf); err != nil {
			return err
		}
		sum.Events += len(fresh)
		sum.Batches++
	}
	sum.Elapsed = time.Since(start)
	out, err := json.Marshal(sum)
	if err != nil {
		return err
	}
	return os.WriteFile(cfg.SummaryPath, out, 0o644)
}

// newRecord returns the record of event id: its payload is the id as
// text, or for a ledger event its place in plan, with its ordering key. A
// duplicate is the same record again.
func newRecord(id uuid.UUID, plan map[uuid.UUID]ledgerEvent) *inbox.Record {
	payload := []byte(id.String())
	ev, ledger := plan[id]
	if ledger {
		payload = ledgerPayload(id, ev)
	}
	r, err := inbox.NewRecord(id, eventType(id), payload)
	if err != nil {
		panic(err) // ids are never Nil, types never blank
	}
	if ledger {
		r = r.WithOrderingKey(ev.key)
	}
	return r
}

// setUntilStored calls Set until it succeeds, backing off between tries;
// the pool replaces broken connections by itself. Retrying is safe because
// Set ignores rows that exist already. It gives up after 3 minutes.
func setUntilStored(c *inbox.Client, recs []*inbox.Record, log *slog.Logger) (retries int, err error) {
	start := time.Now()
	for try := 1; ; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.Set(ctx, recs...)
		cancel()
		if err == nil {
			return retries, nil
		}
		if errors.Is(err, inbox.ErrInvalidRecord) || errors.Is(err, inbox.ErrUnknownEventType) {
			return retries, err
		}
		if time.Since(start) > 3*time.Minute {
			return retries, fmt.Errorf("gave up after %d tries: %w", try, err)
		}
		retries++
		if try == 1 || try%10 == 0 {
			log.Warn("chaos: set failed; retrying", "try", try, "error", err)
		}
		time.Sleep(min(50*time.Millisecond<<min(try-1, 5), time.Second))
	}
}
