package inbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// writeLoop writes the batches of results the owner hands it, one batch
// at a time, and tells the owner when each is done.
func (w *worker) writeLoop() {
	defer w.io.Done()
	for batch := range w.writes {
		w.send(event{kind: evWritten, jobs: batch, written: w.write(batch)})
	}
}

// write writes a batch of results (see complete): done, failed with its
// next attempt, dead, or handed back unstarted. A TxHandler's committed
// result is written already. It returns the rows written.
func (w *worker) write(batch []*job) map[rowID]bool {
	n := len(batch)
	ctids := make([]pgtype.TID, 0, n)
	ids := make([]pgtype.UUID, 0, n)
	keys := make([]string, 0, n)
	claims := make([]int32, 0, n)
	statuses := make([]string, 0, n)
	errs := make([]*string, 0, n)
	types := make([]*string, 0, n)
	counted := make([]bool, 0, n)
	dues := make([]pgtype.Timestamptz, 0, n)
	dead := make(map[rowID]DeadRecord)
	deadClaims := make(map[rowID]int)
	now := time.Now()
	var retries []time.Time // when the failed rows are due again
	released := false
	var next promotions
	add := func(j *job, status string, text *string, count bool, due *time.Time) {
		if !j.nextAtWrite {
			next.add(j, status)
		}
		ctids, ids, keys, claims = append(ctids, j.ctid), append(ids, pgUUID(j.id)), append(keys, j.key), append(claims, int32(j.claim))
		statuses, errs, counted = append(statuses, status), append(errs, text), append(counted, count)
		switch {
		case due != nil:
			dues = append(dues, pgtype.Timestamptz{Time: *due, Valid: true})
		case j.res.kind == resWaiting:
			dues = append(dues, pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true})
		default:
			dues = append(dues, pgtype.Timestamptz{}) // keep the stored one
		}
		var etype *string
		if text != nil {
			etype = &j.res.etype
		}
		types = append(types, etype)
		if due != nil && status == string(Failed) {
			retries = append(retries, *due)
		}
	}
	for _, j := range batch {
		r := j.res
		switch r.kind {
		case resCommitted:
		case resDone:
			add(j, string(Done), nil, true, nil)
		case resReleased:
			status := Failed
			if j.attempt <= 1 {
				status = Null
			}
			add(j, string(status), nil, false, &now)
			released = true
		case resWaiting:
			add(j, string(Null), nil, false, nil) // only a row with no status waits
			next.behind(j)
		case resRetryAfter:
			due := now.Add(r.after)
			add(j, string(Failed), &r.text, false, &due)
		case resDiscard:
			add(j, string(Dead), &r.text, true, nil)
			dead[j.rowID], deadClaims[j.rowID] = w.deadRecord(j, r.err), j.claim
		case resFailed:
			if j.attempt >= j.maxAttempts {
				add(j, string(Dead), &r.text, true, nil)
				dead[j.rowID], deadClaims[j.rowID] = w.deadRecord(j, r.err), j.claim
				continue
			}
			due := now.Add(retryDelay(j.attempt, j.route.backoffBase, j.route.backoffMax, rand.Float64()))
			add(j, string(Failed), &r.text, true, &due)
			w.log.Debug("inbox: attempt failed", "event_id", j.id, "handler_key", j.key,
				"attempt", j.attempt, "next_attempt_at", due, "error", r.text)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	for k, rec := range dead {
		w.deadCalls.remember(k, deadClaims[k], rec)
	}
	started := time.Now()
	lock, promote := next.stmts(w.cfg.notify)
	written, err := w.complete(ctids, ids, keys, claims, statuses, errs, types, counted, dues, lock, promote)
	if w.cfg.hooks != nil {
		lost := len(keys) - len(written)
		if err != nil {
			lost = 0 // not known
		}
		w.cfg.hooks.write(w.log, WriteEvent{Rows: len(written), Lost: lost, Duration: time.Since(started), Err: err})
	}
	for k, rec := range dead {
		if !written[k] {
			w.deadCalls.forget(k)
			continue
		}
		w.logDead(rec)
	}
	if len(dead) > 0 && w.cfg.hasDead {
		w.deadCalls.signal()
	}
	w.scheduleRetries(retries)
	if released && w.cfg.notify {
		// Other workers may take the handed-back rows at once.
		if _, err := w.db.exec(w.writeCtx, `SELECT `+notifySQL); err != nil {
			w.log.Debug("inbox: notify after handing rows back", "error", err)
		}
	}
	if lost := len(keys) - len(written); lost > 0 && err == nil {
		w.report(fmt.Errorf("%w: %d results not written; those rows will be retried", ErrLeaseLost, lost))
	}
	return written
}

// complete writes results and returns the rows written. One statement
// reaches each row by its ctid; a lease renewal that committed since the
// ctid was read has moved the row, and the statement misses it. A second
// statement writes the missed rows, found by key; a row missed again is no
// longer the worker's.
//
// The statements lock and promote run before and after each in the same
// transaction: they make the next rows of finished ordered rows due.
func (w *worker) complete(ctids []pgtype.TID, ids []pgtype.UUID, keys []string, claims []int32, statuses []string,
	errs, types []*string, counted []bool, dues []pgtype.Timestamptz, lock, promote []stmt) (map[rowID]bool, error) {
	written := make(map[rowID]bool, len(ids))
	// mark records the rows a statement wrote: it returns the positions,
	// from 1, in the arrays it was given, whose keys are ids and keys.
	mark := func(ids []pgtype.UUID, keys []string) func(pgx.Rows) error {
		return func(rows pgx.Rows) error {
			var i int
			_, err := pgx.ForEachRow(rows, []any{&i}, func() error {
				written[rowID{ids[i-1].Bytes, keys[i-1]}] = true
				return nil
			})
			return err
		}
	}
	err := w.retry(w.writeCtx, "write results", func() error {
		clear(written)
		return w.db.tidOnly(w.writeCtx, mark(ids, keys), completeSQL,
			[]any{ctids, ids, keys, claims, statuses, errs, counted, dues, w.deadBy, pgUUID(w.id), types}, lock, promote)
	})
	if err != nil {
		clear(written) // marked by a transaction that did not commit
		return written, err
	}
	if len(written) == len(ids) {
		return written, nil
	}
	var (
		mIDs      []pgtype.UUID
		mKeys     []string
		mClaims   []int32
		mStatuses []string
		mErrs     []*string
		mTypes    []*string
		mCounted  []bool
		mDues     []pgtype.Timestamptz
	)
	for i := range ids {
		if !written[rowID{ids[i].Bytes, keys[i]}] {
			mIDs, mKeys, mClaims, mStatuses = append(mIDs, ids[i]), append(mKeys, keys[i]), append(mClaims, claims[i]), append(mStatuses, statuses[i])
			mErrs, mTypes, mCounted, mDues = append(mErrs, errs[i]), append(mTypes, types[i]), append(mCounted, counted[i]), append(mDues, dues[i])
		}
	}
	forget := func() {
		for i := range mIDs {
			delete(written, rowID{mIDs[i].Bytes, mKeys[i]})
		}
	}
	err = w.retry(w.writeCtx, "write moved results", func() error {
		forget()
		return w.db.keyOnly(w.writeCtx, mark(mIDs, mKeys), completeByKeySQL,
			[]any{mIDs, mKeys, mClaims, mStatuses, mErrs, mCounted, mDues, w.deadBy, pgUUID(w.id), mTypes}, lock, promote)
	})
	if err != nil {
		forget()
	}
	return written, err
}

// promotions are the (handler key, ordering key) pairs whose first
// waiting row a transaction makes due, under their keys' locks: the keys
// of rows finished by a write, of rows stored by a Set or a backfill, of
// keys an operator skips or maintenance finds stranded. Everyone who makes
// rows due builds them here.
type promotions struct {
	keys, orders []string
	skip         []bool  // the key's dead rows leave its order first
	after        []int64 // the lookup of the row to make due starts after this seq
}

// fromStart is the after of a promotion that looks from a key's first row.
const fromStart = -1

// key notes a promotion of (handler key, ordering key).
func (p *promotions) key(handlerKey, order string, skip bool, after int64) {
	p.keys, p.orders, p.skip, p.after = append(p.keys, handlerKey), append(p.orders, order), append(p.skip, skip), append(p.after, after)
}

// add notes the key of job j, written with status: of a row done, and of
// a row dead under a handler that moves on past dead rows (its key then
// leaves its order). A parked key (a dead row, by default) makes nothing
// due.
func (p *promotions) add(j *job, status string) {
	if j.order == "" {
		return
	}
	switch {
	case status == string(Done):
		p.key(j.key, j.order, false, j.seq)
	case status == string(Dead) && j.route.movesOn:
		p.key(j.key, j.order, true, j.seq)
	}
}

// behind notes the key of a row handed back to wait in its key's order,
// behind a row that is not done here: whoever finishes that row makes the
// next due, and if that happened already (the row this one waited for was
// taken over and finished elsewhere), the promotion from that row's place
// on makes this one due.
func (p *promotions) behind(j *job) {
	if n := len(p.keys) - 1; n >= 0 && p.keys[n] == j.key && p.orders[n] == j.order && p.after[n] == j.res.behind-1 {
		return // the chain's rows behind one row come one after the other
	}
	p.key(j.key, j.order, false, j.res.behind-1)
}

// stmts returns the statement that locks the keys, to run before the rows
// are written (a Set takes the locks before it may wait for a row: so
// must everyone), and the one that promotes their next rows, waking idle
// workers if notify; none when there is nothing to promote.
func (p *promotions) stmts(notify bool) (lock, promote []stmt) {
	if len(p.keys) == 0 {
		return nil, nil
	}
	return []stmt{{orderLockOnlySQL, []any{p.orders}}}, []stmt{{promoteSQL, []any{p.keys, p.orders, p.skip, notify, p.after}}}
}

// deadRecord describes a row that dies with err.
func (w *worker) deadRecord(j *job, err error) DeadRecord {
	return DeadRecord{EventID: j.id, EventType: j.route.eventType, HandlerKey: j.key, Attempts: j.attempt, Err: err}
}

// died handles a row that a claim found dead (its last lease expired).
func (w *worker) died(rec DeadRecord, claims int) {
	w.logDead(rec)
	if w.cfg.hasDead {
		w.deadCalls.remember(rowID{rec.EventID, rec.HandlerKey}, claims, rec)
		w.deadCalls.signal()
	}
}

// logDead logs a row whose death is written, and reports it to the hooks.
func (w *worker) logDead(rec DeadRecord) {
	if w.cfg.hooks != nil {
		w.cfg.hooks.dead(w.log, rec)
	}
	w.log.Warn("inbox: row is dead", "event_id", rec.EventID, "event_type", rec.EventType,
		"handler_key", rec.HandlerKey, "attempts", rec.Attempts, "error", rec.Err)
}

// renewLoop renews the leases the owner hands it, one batch at a time.
func (w *worker) renewLoop() {
	defer w.io.Done()
	for items := range w.renewals {
		renewed, lost, err := w.renew(items)
		w.send(event{kind: evRenewed, renewed: renewed, lost: lost, err: err})
	}
}

// renew extends the leases of items and returns those renewed, with their
// new places, and those the worker no longer holds.
func (w *worker) renew(items []renewItem) ([]renewedRow, []renewItem, error) {
	ids := make([]pgtype.UUID, len(items))
	keys := make([]string, len(items))
	claims := make([]int32, len(items))
	for i, it := range items {
		ids[i], keys[i], claims[i] = pgUUID(it.id), it.key, int32(it.claim)
	}
	var renewed []renewedRow
	var lost []renewItem
	// A renewal that takes longer is of no use: the owner gives the rows
	// up meanwhile (see owner.expire).
	ctx, cancel := context.WithTimeout(w.ioCtx, renewTimeout(w.cfg.lease))
	defer cancel()
	err := w.db.noFlush(ctx, func(rows pgx.Rows) error {
		var id pgtype.UUID
		var r renewedRow
		_, err := pgx.ForEachRow(rows, []any{&id, &r.key, &r.claim, &r.ctid}, func() error {
			r.id = id.Bytes
			if r.ctid.Valid {
				renewed = append(renewed, r)
			} else {
				lost = append(lost, r.renewItem)
			}
			return nil
		})
		return err
	}, renewSQL, []any{ids, keys, claims, pgUUID(w.id), w.cfg.lease.Milliseconds()})
	return renewed, lost, err
}
