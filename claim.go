package inbox

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// claimBudget bounds the payload bytes one claim brings into memory; the
// first row of a claim is taken whatever its size.
const claimBudget = 64 << 20

// lostAttemptText is recorded for an attempt whose lease expired.
const lostAttemptText = "lease expired before a result was written (worker stopped or lost the database)"

// claimLoop claims rows whenever the owner has room for them, polling when
// there is nothing to claim. It stops between claims, never during one.
func (w *worker) claimLoop() {
	defer w.claimer.Done()
	defer w.send(claimerDoneEv{})
	failures := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		w.send(wantPlanEv{})
		var plan claimPlan
		select {
		case plan = <-w.plans:
		case <-w.stopClaims:
			return
		case <-w.hardStop:
			return
		}
		locked, err := w.claim(plan)
		if err != nil {
			if w.ioCtx.Err() != nil {
				return
			}
			failures++
			w.report(fmt.Errorf("inbox: claim: %w", err))
			if !sleep(retryDelay(failures, 100*time.Millisecond, 5*time.Second, rand.Float64()), w.stopClaims) {
				return
			}
			continue
		}
		failures = 0
		if locked == plan.n {
			continue // more may be due: claim again at once
		}
		if !w.idle(timer) {
			return
		}
	}
}

// idle waits for a notification, the poll delay, or the earliest retry
// this worker scheduled, whichever comes first. It returns false on stop.
func (w *worker) idle(timer *time.Timer) bool {
	poll := pollDelay(w.cfg.iterationRate, w.cfg.iterationSeed, rand.Float64())
	for {
		d := poll
		if next, ok := w.retries.next(); ok {
			d = max(0, min(d, time.Until(next)))
		}
		timer.Reset(d)
		select {
		case <-w.wake:
		case <-timer.C:
		case <-w.resched:
			timer.Stop()
			continue
		case <-w.stopClaims:
			return false
		}
		timer.Stop()
		w.retries.due(time.Now()) // the claim that follows takes what is due
		return true
	}
}

// scheduleRetry makes the claimer wake by at.
func (w *worker) scheduleRetry(at time.Time) {
	if w.retries.add(at) {
		signal(w.resched)
	}
}

// maxRetryTimes bounds the retry times a worker remembers; beyond them,
// the latest are forgotten and polling finds their rows.
const maxRetryTimes = 256

// retryTimes are the times at which rows this worker failed become due
// again, earliest first.
type retryTimes struct {
	mu    sync.Mutex
	times []time.Time
}

// add records at and reports whether it is now the earliest.
func (r *retryTimes) add(at time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, _ := slices.BinarySearchFunc(r.times, at, time.Time.Compare)
	if i >= maxRetryTimes {
		return false
	}
	r.times = slices.Insert(r.times, i, at)
	if len(r.times) > maxRetryTimes {
		r.times = r.times[:maxRetryTimes]
	}
	return i == 0
}

// next returns the earliest retry time.
func (r *retryTimes) next() (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.times) == 0 {
		return time.Time{}, false
	}
	return r.times[0], true
}

// due forgets the retry times up to now.
func (r *retryTimes) due(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := 0
	for i < len(r.times) && !r.times[i].After(now) {
		i++
	}
	r.times = slices.Delete(r.times, 0, i)
}

// claim claims the rows plan allows and hands them to the owner. It
// returns how many rows the claim locked, which is at least as many as it
// claimed.
func (w *worker) claim(plan claimPlan) (int, error) {
	var locked int
	var jobs []*job
	var died []DeadRecord
	err := w.db.noFlush(w.ioCtx, func(rows pgx.Rows) error {
		var (
			id                                     pgtype.UUID
			eventType, key, status, oldStatus, msg string
			payload                                []byte
			attempt, maxAttempts                   int
			storedAt                               time.Time
		)
		_, err := pgx.ForEachRow(rows, []any{&locked, &id, &eventType, &key, &payload, &attempt, &maxAttempts,
			&status, &oldStatus, &msg, &storedAt}, func() error {
			ro := w.routes.byPair[[2]string{eventType, key}]
			rid := rowID{id.Bytes, key}
			if oldStatus == string(Progress) {
				w.log.Warn("inbox: claimed a row whose lease had expired", "event_id", rid.id,
					"handler_key", key, "attempt", attempt, "status", status)
			}
			if Status(status) == Dead {
				var err error = &textError{text: msg}
				if oldStatus == string(Progress) {
					err = fmt.Errorf("%w: %s", ErrLeaseExpired, msg)
				}
				died = append(died, DeadRecord{EventID: rid.id, EventType: eventType, HandlerKey: key, Attempts: attempt, Err: err})
				return nil
			}
			jobs = append(jobs, &job{rowID: rid, route: ro, payload: payload, attempt: attempt,
				maxAttempts: maxAttempts, storedAt: storedAt})
			payload = nil
			return nil
		})
		return err
	}, claimSQL, plan.types, plan.keys, plan.n, plan.caps, int64(claimBudget), pgUUID(w.id),
		w.cfg.lease.Milliseconds(), lostAttemptText, w.deadBy)
	if err != nil {
		return 0, err
	}
	if len(jobs) > 0 {
		w.send(claimedEv{jobs: jobs})
	}
	for _, rec := range died {
		w.died(rec)
	}
	return locked, nil
}
