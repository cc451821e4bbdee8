package inbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
)

// completeLoop writes results in batches and renews leases. It is the only
// goroutine that writes to the rows a worker holds (a TxHandler's own
// completion aside), so its statements cannot deadlock with each other.
func (w *worker) completeLoop() {
	defer w.completer.Done()
	ctx := w.writeCtx
	ticker := time.NewTicker(w.cfg.lease / 3)
	defer ticker.Stop()
	lastRenew := time.Now()
	batch := make([]result, 0, w.capacity)
	for {
		select {
		case r, ok := <-w.results:
			if !ok {
				return
			}
			batch = append(batch[:0], r)
			open := w.drain(&batch)
			w.flush(ctx, batch)
			if !open {
				return
			}
		case <-ticker.C:
			lastRenew = w.renew(ctx, lastRenew)
		case <-ctx.Done(): // hard stop
			return
		}
	}
}

// drain appends the results already waiting, and reports whether the
// results channel is still open.
func (w *worker) drain(batch *[]result) bool {
	for len(*batch) < cap(*batch) {
		select {
		case r, ok := <-w.results:
			if !ok {
				return false
			}
			*batch = append(*batch, r)
		default:
			return true
		}
	}
	return true
}

// rowSet collects the columns of many rows for one set-based statement.
type rowSet struct {
	ids      [][16]byte // binary uuids: uuid.UUID would encode as text
	keys     []string
	attempts []int32
}

func (s *rowSet) add(j *job) {
	s.ids = append(s.ids, j.id)
	s.keys = append(s.keys, j.key)
	s.attempts = append(s.attempts, int32(j.attempts))
}

// flush writes a batch of results: done, failed with its next attempt,
// dead, or handed back.
func (w *worker) flush(ctx context.Context, batch []result) {
	var ended, back rowSet // ended: done, failed or dead; back: never started
	var statuses []string
	var errs []*string
	var dues []*time.Time
	dead := make(map[rowKey]DeadRecord)
	lost := 0
	now := time.Now()
	var earliest time.Time // earliest retry written
	for _, r := range batch {
		j := r.job
		switch {
		case r.released:
			back.add(j)
		case r.written:
		case r.lost:
			lost++
		case r.err == nil:
			ended.add(j)
			statuses, errs, dues = append(statuses, string(Done)), append(errs, nil), append(dues, nil)
		default:
			msg := r.err.Error()
			ended.add(j)
			errs = append(errs, &msg)
			if j.attempts >= w.cfg.maxAttempts {
				statuses, dues = append(statuses, string(Dead)), append(dues, nil)
				dead[j.rowKey] = DeadRecord{EventID: j.id, EventType: j.eventType, HandlerKey: j.key,
					Attempts: j.attempts, Err: r.err}
			} else {
				due := now.Add(retryDelay(j.attempts, w.cfg.backoffBase, w.cfg.backoffMax, rand.Float64()))
				statuses, dues = append(statuses, string(Failed)), append(dues, &due)
				if earliest.IsZero() || due.Before(earliest) {
					earliest = due
				}
				w.log.Debug("inbox: attempt failed", "event_id", j.id, "handler_key", j.key,
					"attempt", j.attempts, "next_attempt_at", due, "error", r.err)
			}
		}
	}
	if len(ended.ids) > 0 {
		defer func() {
			if !earliest.IsZero() {
				w.scheduleRetry(earliest)
			}
		}()
		var written map[rowKey]bool
		err := w.retry(ctx, "write results", func() error {
			rows, err := w.ib.pool.Query(ctx, completeSQL, ended.ids, ended.keys, ended.attempts,
				statuses, errs, dues, [16]byte(w.id))
			if err != nil {
				return err
			}
			written, err = collectKeys(rows)
			return err
		})
		if err == nil {
			lost += len(ended.ids) - len(written)
			for k, rec := range dead {
				if written[k] {
					w.sendDead(rec)
				}
			}
		}
	}
	if len(back.ids) > 0 {
		_ = w.retry(ctx, "hand back unstarted rows", func() error {
			_, err := w.ib.pool.Exec(ctx, releaseSQL, back.ids, back.keys, back.attempts, [16]byte(w.id), w.cfg.notify)
			return err
		})
	}
	if lost > 0 {
		w.report(fmt.Errorf("%w: %d results not written; those rows will be retried", ErrLeaseLost, lost))
	}
	w.mu.Lock()
	for _, r := range batch {
		delete(w.held, r.job.rowKey)
	}
	w.mu.Unlock()
}

// retry runs fn until it succeeds, the worker quits, or a lease has passed
// since the first failure: by then the rows are no longer ours to write.
func (w *worker) retry(ctx context.Context, what string, fn func() error) error {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		err = fmt.Errorf("inbox: %s: %w", what, err)
		w.report(err)
		if ctx.Err() != nil || time.Since(start) > w.cfg.lease {
			return err
		}
		if !sleep(retryDelay(attempt, 50*time.Millisecond, w.cfg.lease/4, rand.Float64()), ctx.Done()) {
			return err
		}
	}
}

func collectKeys(rows pgx.Rows) (map[rowKey]bool, error) {
	keys := make(map[rowKey]bool)
	var k rowKey
	_, err := pgx.ForEachRow(rows, []any{(*[16]byte)(&k.id), &k.key}, func() error {
		keys[k] = true
		return nil
	})
	return keys, err
}

// renew extends the leases of the rows this worker holds: queued rows,
// running handlers within their timeout, and results not yet written. A
// handler whose row was taken over is cancelled. If renewals keep failing
// until the leases are about to run out, every running handler is
// cancelled: its row may soon be claimed by another worker.
func (w *worker) renew(ctx context.Context, lastOK time.Time) time.Time {
	now := time.Now()
	var set rowSet
	var jobs []*job
	w.mu.Lock()
	for _, j := range w.held {
		if !j.lost && (!j.started || j.finished || now.Before(j.renewUntil)) {
			set.add(j)
			jobs = append(jobs, j)
		}
	}
	w.mu.Unlock()
	if len(jobs) == 0 {
		return now
	}
	var kept map[rowKey]bool
	err := w.queryNoFlush(ctx, func(rows pgx.Rows) (err error) {
		kept, err = collectKeys(rows)
		return err
	}, renewSQL, set.ids, set.keys, set.attempts, [16]byte(w.id), w.cfg.lease.Milliseconds())
	if err != nil {
		w.report(fmt.Errorf("inbox: renew %d leases: %w", len(jobs), err))
		if time.Since(lastOK) >= w.cfg.lease*2/3 {
			w.loseLeases(jobs)
		}
		return lastOK
	}
	if len(kept) < len(jobs) {
		var gone []*job
		for _, j := range jobs {
			if !kept[j.rowKey] {
				gone = append(gone, j)
			}
		}
		w.loseLeases(gone)
	}
	return now
}

// loseLeases marks jobs as lost and cancels those whose handlers are
// running. A queued lost job is not started.
func (w *worker) loseLeases(jobs []*job) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, j := range jobs {
		if j.lost || j.finished || j.committing {
			continue
		}
		j.lost = true
		if j.started && j.cancel != nil {
			j.cancel(ErrLeaseLost)
		}
		w.log.Warn("inbox: lease lost", "event_id", j.id, "handler_key", j.key, "attempt", j.attempts)
	}
}
