package inbox

import (
	"fmt"
	"maps"
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
		w.write(batch)
		w.send(writtenEv{jobs: batch})
	}
}

// write writes a batch of results in one statement: done, failed with its
// next attempt, dead, or handed back unstarted. A TxHandler's committed
// result is written already.
func (w *worker) write(batch []*job) {
	n := len(batch)
	ids := make([]pgtype.UUID, 0, n)
	keys := make([]string, 0, n)
	attempts := make([]int32, 0, n)
	statuses := make([]string, 0, n)
	errs := make([]*string, 0, n)
	counted := make([]bool, 0, n)
	dues := make([]*time.Time, 0, n)
	dead := make(map[rowID]DeadRecord)
	now := time.Now()
	var earliest time.Time // earliest retry written
	released := false
	add := func(j *job, status string, text *string, count bool, due *time.Time) {
		ids, keys, attempts = append(ids, pgUUID(j.id)), append(keys, j.key), append(attempts, int32(j.attempt))
		statuses, errs, counted, dues = append(statuses, status), append(errs, text), append(counted, count), append(dues, due)
		if due != nil && status == string(Failed) && (earliest.IsZero() || due.Before(earliest)) {
			earliest = *due
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
		case resRetryAfter:
			due := now.Add(r.after)
			add(j, string(Failed), &r.text, false, &due)
		case resDiscard:
			add(j, string(Dead), &r.text, true, nil)
			dead[j.rowID] = w.deadRecord(j, r.err)
		case resFailed:
			if j.attempt >= j.maxAttempts {
				add(j, string(Dead), &r.text, true, nil)
				dead[j.rowID] = w.deadRecord(j, r.err)
				continue
			}
			due := now.Add(retryDelay(j.attempt, j.route.backoffBase, j.route.backoffMax, rand.Float64()))
			add(j, string(Failed), &r.text, true, &due)
			w.log.Debug("inbox: attempt failed", "event_id", j.id, "handler_key", j.key,
				"attempt", j.attempt, "next_attempt_at", due, "error", r.text)
		}
	}
	if len(ids) == 0 {
		return
	}
	for k, rec := range dead {
		w.deadCalls.remember(k, rec)
	}
	written, err := w.complete(ids, keys, attempts, statuses, errs, counted, dues)
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
	if !earliest.IsZero() {
		w.scheduleRetry(earliest)
	}
	if released && w.cfg.notify {
		// Other workers may take the handed-back rows at once.
		if _, err := w.db.exec(w.ioCtx, `SELECT `+notifySQL); err != nil {
			w.log.Debug("inbox: notify after handing rows back", "error", err)
		}
	}
	if lost := len(keys) - len(written); lost > 0 && err == nil {
		w.report(fmt.Errorf("%w: %d results not written; those rows will be retried", ErrLeaseLost, lost))
	}
}

// missedTries is how often a result write is repeated for rows it missed.
const missedTries = 3

// complete runs completeSQL for the given rows and returns those written.
// The statement reaches each row by the ctid it saw when it started; a
// lease renewal that committed meanwhile moves the row to a new ctid, and
// the statement then misses it. Missed rows are written again, in a new
// statement; a row still missed after missedTries statements is no longer
// the worker's.
func (w *worker) complete(ids []pgtype.UUID, keys []string, attempts []int32, statuses []string, errs []*string,
	counted []bool, dues []*time.Time) (map[rowID]bool, error) {
	written := make(map[rowID]bool, len(ids))
	for try := 0; try < missedTries && len(ids) > 0; try++ {
		var got map[rowID]bool
		err := w.retry(w.ioCtx, "write results", func() error {
			rows, err := w.db.query(w.ioCtx, completeSQL, ids, keys, attempts, statuses, errs, counted, dues,
				w.deadBy, pgUUID(w.id))
			if err != nil {
				return err
			}
			got, err = collectKeys(rows)
			return err
		})
		if err != nil {
			return written, err
		}
		maps.Copy(written, got)
		n := 0
		for i := range ids {
			if got[rowID{ids[i].Bytes, keys[i]}] {
				continue
			}
			ids[n], keys[n], attempts[n], statuses[n], errs[n], counted[n], dues[n] =
				ids[i], keys[i], attempts[i], statuses[i], errs[i], counted[i], dues[i]
			n++
		}
		ids, keys, attempts, statuses, errs, counted, dues = ids[:n], keys[:n], attempts[:n], statuses[:n], errs[:n], counted[:n], dues[:n]
	}
	return written, nil
}

// deadRecord describes a row that dies with err.
func (w *worker) deadRecord(j *job, err error) DeadRecord {
	return DeadRecord{EventID: j.id, EventType: j.route.eventType, HandlerKey: j.key, Attempts: j.attempt, Err: err}
}

// died handles a row that a claim found dead (its last lease expired).
func (w *worker) died(rec DeadRecord) {
	w.logDead(rec)
	if w.cfg.hasDead {
		w.deadCalls.remember(rowID{rec.EventID, rec.HandlerKey}, rec)
		w.deadCalls.signal()
	}
}

func (w *worker) logDead(rec DeadRecord) {
	w.log.Warn("inbox: row is dead", "event_id", rec.EventID, "event_type", rec.EventType,
		"handler_key", rec.HandlerKey, "attempts", rec.Attempts, "error", rec.Err)
}

func collectKeys(rows pgx.Rows) (map[rowID]bool, error) {
	keys := make(map[rowID]bool)
	var id pgtype.UUID
	var key string
	_, err := pgx.ForEachRow(rows, []any{&id, &key}, func() error {
		keys[rowID{id.Bytes, key}] = true
		return nil
	})
	return keys, err
}

// renewLoop renews the leases the owner hands it, one batch at a time.
func (w *worker) renewLoop() {
	defer w.io.Done()
	for items := range w.renewals {
		lost, err := w.renew(items)
		w.send(renewedEv{lost: lost, err: err})
	}
}

// renew extends the leases of items and returns those the worker no longer
// holds.
func (w *worker) renew(items []renewItem) ([]renewItem, error) {
	ids := make([]pgtype.UUID, len(items))
	keys := make([]string, len(items))
	attempts := make([]int32, len(items))
	for i, it := range items {
		ids[i], keys[i], attempts[i] = pgUUID(it.id), it.key, int32(it.attempt)
	}
	var lost []renewItem
	err := w.db.noFlush(w.ioCtx, func(rows pgx.Rows) error {
		var id pgtype.UUID
		var it renewItem
		_, err := pgx.ForEachRow(rows, []any{&id, &it.key, &it.attempt}, func() error {
			it.id = id.Bytes
			lost = append(lost, it)
			return nil
		})
		return err
	}, renewSQL, ids, keys, attempts, pgUUID(w.id), w.cfg.lease.Milliseconds())
	return lost, err
}
