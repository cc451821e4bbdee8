package inbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc64"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// Client stores records in the inbox. Get it from [Inbox.Client]; it is safe
// for concurrent use and works whether or not the Inbox is started, so a
// process may store events and leave processing to others.
type Client struct {
	db         db
	routes     *routes
	unknown    UnknownEventTypes
	conflicts  ConflictingDuplicates
	notify     bool
	logger     *slog.Logger
	hooks      hooks
	propagator Propagator
	backlog    *backlog // nil without WithMaxBacklog
}

// SetResult says what a Set did with its records. Each record is counted
// once: New + Duplicates + Conflicting + Skipped = Records.
type SetResult struct {
	// Records is the number of records given.
	Records int
	// New counts records stored now: at least one of their rows (one per
	// handler key) was inserted.
	New int
	// Duplicates counts records stored before (or earlier in the same
	// call) with the same event type and payload: nothing was written for
	// them.
	Duplicates int
	// Conflicting counts records whose id is stored already (or earlier in
	// the call) with another event type or payload. Their existing rows are
	// left as they are; rows for handler keys that had none yet are stored.
	// With [RejectConflicting] Set fails instead and writes nothing.
	Conflicting int
	// Skipped counts records of event types with no handler, skipped under
	// [SkipUnknown].
	Skipped int
	// Rows is the number of rows inserted: one per new (record, handler
	// key).
	Rows int
	// ConflictingIDs lists the conflicting records' ids, each once, in the
	// order of the call.
	ConflictingIDs []uuid.UUID
}

// Set stores records, one row per handler registered for each record's
// event type, in one statement: all rows are stored or none. A record whose
// (id, handler key) row exists already is a duplicate and is ignored; it is
// not an error. Once Set returns nil the records are durable and the
// message may be acknowledged to the broker.
//
// If Set returns an error (the database unreachable or restarting, ctx
// done), do not acknowledge the message: retry Set or let the broker
// redeliver. Retrying is always safe, even when the connection broke while
// the rows were committing: rows that did get stored are then ignored as
// duplicates. Concurrent Sets of overlapping records (a broker redelivering
// a batch to another consumer) never deadlock: rows are written in one
// global order.
//
// Set checks every record before writing anything. It fails with an error
// wrapping [ErrNoRecords] for no records, [ErrInvalidRecord] for a nil or
// malformed record, [ErrUnknownEventType] for an event type with no
// handler (unless [SkipUnknown] is set), and [ErrConflictingDuplicate] for
// a conflicting duplicate under [RejectConflicting]. Use
// [Client.SetWithResult] to learn how many records were new.
func (c *Client) Set(ctx context.Context, records ...*Record) error {
	_, err := c.SetWithResult(ctx, records...)
	return err
}

// SetTx is Set inside the caller's transaction: the rows commit or roll
// back with it, so an event can be stored atomically with the caller's own
// writes. Idle workers are woken when the transaction commits. An error
// from the database leaves tx aborted, as any failed statement does; a
// [RejectConflicting] conflict does not (Set undoes its own writes with a
// savepoint).
//
// Deadlock freedom holds within one SetTx call; a transaction that calls
// SetTx several times, or writes inbox rows otherwise, takes its locks in
// the order of its calls. Records with ordering keys lock their keys until
// tx ends: the key's other Sets, and the finishing of its rows, wait for
// it, so keep such transactions short.
func (c *Client) SetTx(ctx context.Context, tx pgx.Tx, records ...*Record) error {
	_, err := c.SetTxWithResult(ctx, tx, records...)
	return err
}

// SetWithResult is [Client.Set], and also says what it did with each
// record: new, duplicate, conflicting or skipped. It needs no extra round
// trip when every record is new, and one more when some existed.
func (c *Client) SetWithResult(ctx context.Context, records ...*Record) (SetResult, error) {
	started := c.clock()
	res, err := c.set(ctx, nil, records)
	c.reportSet(ctx, res, len(records), false, started, err)
	return res, err
}

// set checks records and stores them, in tx if not nil.
func (c *Client) set(ctx context.Context, tx pgx.Tx, records []*Record) (SetResult, error) {
	p, err := c.plan(records)
	if err != nil {
		return SetResult{}, err // bad input: a sentinel or a *RecordsError, as it is
	}
	if err := c.backpressure(ctx, records); err != nil {
		return SetResult{}, err
	}
	if tx != nil {
		return c.setTxPlanned(ctx, tx, p, records)
	}
	return c.setPlanned(ctx, p, records)
}

// clock is when a Set starts, for the hooks: the zero time without them.
func (c *Client) clock() time.Time {
	if c.hooks == nil {
		return time.Time{}
	}
	return time.Now()
}

// reportSet passes a Set, stored or refused, to the OnSet hooks.
func (c *Client) reportSet(ctx context.Context, res SetResult, records int, tx bool, started time.Time, err error) {
	if c.hooks != nil {
		c.hooks.set(c.logger, ctx, SetEvent{Result: res, Records: records, Tx: tx, Duration: time.Since(started), Err: err})
	}
}

// setPlanned stores the rows of a checked Set.
func (c *Client) setPlanned(ctx context.Context, p *setPlan, records []*Record) (SetResult, error) {
	var err error
	if len(p.rows) == 0 {
		return p.result(), nil
	}
	if len(p.chunks) == 1 && c.conflicts == IgnoreConflicting && p.orderKeys == nil {
		err = p.store(ctx, c, c.db.pool)
	} else {
		err = pgx.BeginFunc(ctx, c.db.pool, func(tx pgx.Tx) error { return p.store(ctx, c, tx) })
	}
	if err != nil {
		return SetResult{}, c.setError(len(records), "", err)
	}
	return p.finish(c), nil
}

// SetTxWithResult is [Client.SetTx] with the result of
// [Client.SetWithResult].
func (c *Client) SetTxWithResult(ctx context.Context, tx pgx.Tx, records ...*Record) (SetResult, error) {
	started := c.clock()
	var res SetResult
	err := ErrNilTx
	if tx != nil {
		res, err = c.set(ctx, tx, records)
	}
	c.reportSet(ctx, res, len(records), true, started, err)
	return res, err
}

// setTxPlanned stores the rows of a checked SetTx.
func (c *Client) setTxPlanned(ctx context.Context, tx pgx.Tx, p *setPlan, records []*Record) (SetResult, error) {
	var err error
	if len(p.rows) == 0 {
		return p.result(), nil
	}
	if c.conflicts == RejectConflicting {
		err = pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error { return p.store(ctx, c, sp) })
	} else {
		err = p.store(ctx, c, tx)
	}
	if err != nil {
		return SetResult{}, c.setError(len(records), " in transaction", err)
	}
	return p.finish(c), nil
}

// setError returns the error of a failed Set. Errors of bad input come
// back as they are.
func (c *Client) setError(n int, where string, err error) error {
	var ce *ConflictError
	if errors.As(err, &ce) {
		c.logConflicts(ce.IDs)
		return err
	}
	if errors.Is(err, ErrNoRecords) || errors.Is(err, ErrInvalidRecord) || errors.Is(err, ErrUnknownEventType) {
		return err
	}
	// pgx's errors can quote every argument: keep the message readable.
	return bound(fmt.Errorf("inbox: set %d records%s: %w", n, where, err))
}

// setChunkBytes bounds the arguments of one insert statement (PostgreSQL
// refuses messages over 1 GiB); a Set that needs more is split into
// several statements in one transaction.
const setChunkBytes = 16 << 20

// setRow is one row Set stores.
type setRow struct {
	id          uuid.UUID
	route       *route
	record      int // position of its record in the call
	hash        int64
	payload     []byte
	date        time.Time
	trace       string // the record's own trace context, "" for none
	order       string // the record's ordering key, "" for none
	inserted    bool
	conflicting bool
}

// setPlan is a validated Set: its rows sorted by (id, handler key), without
// repeats, split into chunks.
type setPlan struct {
	records []*Record
	rows    []setRow
	chunks  [][]setRow
	// kind of each record: its outcome so far.
	skipped  []bool
	conflict []bool // conflicts with an earlier record of the call
	// orderKeys are the call's ordering keys, each once; nil for none.
	orderKeys []string
}

// maxOrderedRecords is the most records a Set call with ordering keys
// takes: a row's seq is a number drawn per call times 2^20 plus the
// record's position.
const maxOrderedRecords = 1 << 20

// plan validates records and prepares their rows.
func (c *Client) plan(records []*Record) (*setPlan, error) {
	p := &setPlan{records: records}
	if len(records) == 0 {
		return p, ErrNoRecords
	}
	var (
		unknownTypes     map[string]int
		orders           map[string]bool // the call's ordering keys
		invalid, unknown []int
		errs             []error
	)
	p.skipped = make([]bool, len(records))
	p.conflict = make([]bool, len(records))
	for i, r := range records {
		if err := r.validate(); err != nil {
			invalid, errs = append(invalid, i), append(errs, err)
			continue
		}
		rs, ok := c.routes.byType[r.eventType]
		if !ok {
			if unknownTypes == nil {
				unknownTypes = make(map[string]int)
			}
			unknownTypes[r.eventType]++
			unknown = append(unknown, i)
			p.skipped[i] = true
			continue
		}
		if invalid != nil {
			continue // the call fails: spare the rows
		}
		h := payloadHash(r.eventType, r.payload)
		payload := r.payload
		if payload == nil {
			payload = []byte{} // NULL means erased
		}
		for _, ro := range rs {
			p.rows = append(p.rows, setRow{id: r.id, route: ro, record: i, hash: h, payload: payload, date: r.eventDate, trace: r.trace, order: r.order})
		}
		if r.order != "" && !orders[r.order] {
			if orders == nil {
				orders = make(map[string]bool)
			}
			orders[r.order] = true
			p.orderKeys = append(p.orderKeys, r.order)
		}
	}
	if p.orderKeys != nil && len(records) > maxOrderedRecords {
		return p, fmt.Errorf("%w: %d records carry ordering keys in one call; a call with ordering keys takes at most %d records: split it",
			ErrInvalidRecord, len(records), maxOrderedRecords)
	}
	if c.unknown != RejectUnknown {
		if len(unknown) > 0 {
			c.logger.Debug("inbox: skipped records of unregistered event types", "event_types", typeCounts(unknownTypes))
		}
		unknown, unknownTypes = nil, nil
	}
	if len(invalid) > 0 || len(unknown) > 0 {
		return p, newRecordsError(records, invalid, errs, unknown, unknownTypes)
	}
	// One global order of rows makes concurrent Sets deadlock-free. Of
	// repeated rows the earliest record's comes first.
	slices.SortFunc(p.rows, func(a, b setRow) int {
		if c := bytes.Compare(a.id[:], b.id[:]); c != 0 {
			return c
		}
		if c := strings.Compare(a.route.key, b.route.key); c != 0 {
			return c
		}
		return a.record - b.record
	})
	// A repeated row is a duplicate within the call: dropped, and a
	// conflict when its content differs.
	kept := p.rows[:0]
	for i, row := range p.rows {
		if i > 0 && row.id == kept[len(kept)-1].id && row.route == kept[len(kept)-1].route {
			if row.hash != kept[len(kept)-1].hash {
				p.conflict[row.record] = true
			}
			continue
		}
		kept = append(kept, row)
	}
	p.rows = kept
	if c.conflicts == RejectConflicting {
		if ids := p.conflictingIDs(); len(ids) > 0 {
			return p, &ConflictError{IDs: ids}
		}
	}
	size := 0
	start := 0
	for i, row := range p.rows {
		n := len(row.payload) + len(row.route.key) + len(row.route.eventType) + 64
		if i > start && size+n > setChunkBytes {
			p.chunks = append(p.chunks, p.rows[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(p.rows) {
		p.chunks = append(p.chunks, p.rows[start:])
	}
	return p, nil
}

// crcTable is CRC-64's ECMA polynomial, for payloadHash.
var crcTable = crc64.MakeTable(crc64.ECMA)

// payloadHash is the CRC-64 (ECMA) of the event type, a zero byte and the
// payload: it tells a changed redelivery from a plain one, where a
// difference is an accident of the producer, not an attack.
func payloadHash(eventType string, payload []byte) int64 {
	h := crc64.Update(0, crcTable, []byte(eventType))
	h = crc64.Update(h, crcTable, []byte{0})
	return int64(crc64.Update(h, crcTable, payload))
}

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// store inserts the plan's rows with q, chunk by chunk, then reads the
// stored hashes of the rows that existed. Under RejectConflicting it fails
// with a ConflictError when one differs, for its caller to roll back.
func (p *setPlan) store(ctx context.Context, c *Client, q querier) error {
	var base int64 // of the rows' seq: set for a call with ordering keys
	if p.orderKeys != nil {
		if err := q.QueryRow(ctx, orderLockSQL, c.db.args([]any{p.orderKeys})...).Scan(&base); err != nil {
			return fmt.Errorf("lock ordering keys: %w", err)
		}
	}
	for _, chunk := range p.chunks {
		if err := c.insert(ctx, q, chunk, base); err != nil {
			return err
		}
	}
	if p.orderKeys != nil {
		if err := p.promote(ctx, c, q); err != nil {
			return err
		}
	}
	if err := c.compare(ctx, q, p.rows); err != nil {
		return err
	}
	if c.conflicts == RejectConflicting {
		if ids := p.conflictingIDs(); len(ids) > 0 {
			return &ConflictError{IDs: ids}
		}
	}
	return nil
}

// promote makes due the first row of each (handler key, ordering key) the
// call inserted rows of, if nothing is before it.
func (p *setPlan) promote(ctx context.Context, c *Client, q querier) error {
	var first promotions
	seen := make(map[[2]string]bool)
	for _, r := range p.rows {
		if r.inserted && r.order != "" && !seen[[2]string{r.route.key, r.order}] {
			seen[[2]string{r.route.key, r.order}] = true
			first.key(r.route.key, r.order, false, fromStart)
		}
	}
	_, promote := first.stmts(c.notify) // the call took the keys' locks already
	if err := execAll(ctx, q, c.db, promote); err != nil {
		return fmt.Errorf("make the first rows of their ordering keys due: %w", err)
	}
	return nil
}

// insert runs setSQL for one chunk and marks the rows it inserted. With
// ordering keys in the call (base > 0), it runs setOrderedSQL, each row's
// seq being base * 2^20 plus its record's position.
func (c *Client) insert(ctx context.Context, q querier, rows []setRow, base int64) error {
	n := len(rows)
	ids := make([]pgtype.UUID, n)
	keys := make([]string, n)
	types := make([]string, n)
	payloads := make([][]byte, n)
	hashes := make([]int64, n)
	limits := make([]int32, n)
	dates := make([]time.Time, n)
	var traces []*string // nil: no row has a trace context
	ctxTrace := c.traceOf(ctx)
	for i, r := range rows {
		ids[i], keys[i], types[i] = pgUUID(r.id), r.route.key, r.route.eventType
		payloads[i], hashes[i], limits[i], dates[i] = r.payload, r.hash, int32(r.route.maxAttempts), r.date
		t := ctxTrace
		if r.trace != "" {
			t = &r.trace
		}
		if t != nil && traces == nil {
			traces = make([]*string, n)
		}
		if traces != nil {
			traces[i] = t
		}
	}
	sql, args := setSQL, []any{ids, keys, types, payloads, hashes, limits, dates, c.notify, traces}
	if base > 0 {
		orders, seqs := make([]*string, n), make([]*int64, n)
		for i, r := range rows {
			if r.order != "" {
				seq := base<<20 + int64(r.record)
				orders[i], seqs[i] = &rows[i].order, &seq
			}
		}
		sql, args = setOrderedSQL, append(args, orders, seqs)
	}
	res, err := q.Query(ctx, sql, c.db.args(args)...)
	if err != nil {
		return err
	}
	// The inserted rows come back in the order they were sent: each is
	// found by walking the rows forward.
	var id pgtype.UUID
	var key pgtype.DriverBytes
	var ignored bool
	next := 0
	_, err = pgx.ForEachRow(res, []any{&id, &key, &ignored}, func() error {
		for i := next; i < len(rows); i++ {
			if rows[i].id == id.Bytes && rows[i].route.key == string(key) {
				rows[i].inserted, next = true, i+1
				return nil
			}
		}
		return fmt.Errorf("inbox: set: the database returned a row that was not sent (%s, %q)", uuid.UUID(id.Bytes), key)
	})
	return err
}

// compare reads the stored hashes of the rows that were not inserted and
// marks the rows whose stored hash differs as conflicting.
func (c *Client) compare(ctx context.Context, q querier, rows []setRow) error {
	var ids []pgtype.UUID
	var keys []string
	var at []int
	for i, r := range rows {
		if !r.inserted {
			ids, keys, at = append(ids, pgUUID(r.id)), append(keys, r.route.key), append(at, i)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	res, err := q.Query(ctx, existingSQL, c.db.args([]any{ids, keys})...)
	if err != nil {
		return err
	}
	var pos int
	var stored *int64
	_, err = pgx.ForEachRow(res, []any{&pos, &stored}, func() error {
		r := &rows[at[pos-1]]
		r.conflicting = stored != nil && *stored != r.hash
		return nil
	})
	return err
}

// conflictingIDs lists the ids of conflicting records, in call order.
func (p *setPlan) conflictingIDs() []uuid.UUID {
	if !slices.Contains(p.conflict, true) && !slices.ContainsFunc(p.rows, func(r setRow) bool { return r.conflicting }) {
		return nil
	}
	bad := slices.Clone(p.conflict)
	for _, r := range p.rows {
		if r.conflicting {
			bad[r.record] = true
		}
	}
	var ids []uuid.UUID
	seen := make(map[uuid.UUID]bool)
	for i, b := range bad {
		if b && !seen[p.records[i].id] {
			seen[p.records[i].id] = true
			ids = append(ids, p.records[i].id)
		}
	}
	return ids
}

// result counts what a plan did, so far.
func (p *setPlan) result() SetResult {
	res := SetResult{Records: len(p.records)}
	if len(p.skipped) == 0 {
		return res
	}
	fresh := make([]bool, len(p.records))
	bad := slices.Clone(p.conflict)
	for _, r := range p.rows {
		if r.inserted {
			fresh[r.record] = true
			res.Rows++
		}
		if r.conflicting {
			bad[r.record] = true
		}
	}
	for i := range p.records {
		switch {
		case p.skipped[i]:
			res.Skipped++
		case bad[i]:
			res.Conflicting++
		case fresh[i]:
			res.New++
		default:
			res.Duplicates++
		}
	}
	res.ConflictingIDs = p.conflictingIDs()
	return res
}

// finish returns the result of a stored plan, logging its conflicts.
func (p *setPlan) finish(c *Client) SetResult {
	res := p.result()
	c.logConflicts(res.ConflictingIDs)
	return res
}

// maxConflictLogs bounds the warnings one Set logs, one per id.
const maxConflictLogs = 100

func (c *Client) logConflicts(ids []uuid.UUID) {
	for _, id := range ids[:min(len(ids), maxConflictLogs)] {
		c.logger.Warn("inbox: conflicting duplicate: event id stored already with another event type or payload; the stored version is kept",
			"event_id", id)
	}
	if len(ids) > maxConflictLogs {
		c.logger.Warn("inbox: more conflicting duplicates in the same Set", "more", len(ids)-maxConflictLogs)
	}
}
