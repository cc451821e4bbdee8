package inbox

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// claimBudget bounds the payload bytes one claim brings into memory: a
// claim of more reads each payload when its handler starts. Tests lower it.
var claimBudget atomic.Int64

func init() { claimBudget.Store(64 << 20) }

// lostAttemptText is recorded for an attempt whose lease expired.
const lostAttemptText = "lease expired before a result was written (worker stopped or lost the database)"

// claimLoop claims rows whenever the owner has room for them, polling when
// there is nothing to claim. It stops between claims, never during one. It
// gets the owner's plan for the next claim before it goes idle, so that a
// notification is answered by a claim at once.
func (w *worker) claimLoop() {
	defer w.claimer.Done()
	defer w.send(event{kind: evClaimerDone})
	failures := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	more := true // at start, claim at once
	for {
		w.send(event{kind: evWantPlan})
		var plan claimPlan
		select {
		case plan = <-w.plans:
		case <-w.stopClaims:
			return
		case <-w.hardStop:
			return
		}
		// Room only grows while the claimer idles: the plan stays safe.
		if !more && !w.idle(timer) {
			return
		}
		select {
		case <-w.stopClaims: // a plan and Stop may arrive together
			return
		default:
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
			more = true
			continue
		}
		failures = 0
		more = locked == plan.n // more may be due: claim again at once
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

// scheduleRetries makes the claimer wake when each of the times comes,
// to the next retryResolution.
func (w *worker) scheduleRetries(times []time.Time) {
	earlier := false
	for _, at := range times {
		if w.retries.add(at.Truncate(retryResolution).Add(retryResolution)) {
			earlier = true
		}
	}
	if earlier {
		signal(w.resched)
	}
}

// maxRetryTimes bounds the retry times a worker remembers; beyond them,
// the latest are forgotten and polling finds their rows. retryResolution
// is how close together retry times are told apart.
const (
	maxRetryTimes   = 256
	retryResolution = 5 * time.Millisecond
)

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
	i, found := slices.BinarySearchFunc(r.times, at, time.Time.Compare)
	if found || i >= maxRetryTimes {
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
// returns how many due rows the claim locked: plan.n says that more may be
// due. (The rows of a chain, claimed behind the first row of their key,
// are not counted.)
func (w *worker) claim(plan claimPlan) (int, error) {
	var locked int
	var jobs []*job
	var died []DeadRecord
	var diedClaims []int
	sql, args := claimSQL, []any{plan.types, plan.keys, plan.n, claimBudget.Load(), pgUUID(w.id),
		w.cfg.lease.Milliseconds(), lostAttemptText, w.deadBy, chainLength, plan.followers}
	var before []stmt
	switch {
	case plan.limitKeys != nil:
		sql, args = claimLimitedSQL, append(args, plan.caps, plan.limitKeys, plan.limits)
		before = []stmt{{limitLockSQL, []any{plan.limitKeys}}}
	case plan.capped:
		sql, args = claimCappedSQL, append(args, plan.caps)
	}
	started := time.Now()
	leaseUntil := started.Add(w.cfg.lease)
	rescues := 0
	var moveOn promotions // keys of rows that died under a handler that moves on
	err := w.db.noFlush(w.ioCtx, func(rows pgx.Rows) error {
		// Texts are read in place (DriverBytes): a claimed row's event type
		// and handler key are its route's, and its status and error are
		// needed only for a row that died.
		var (
			id                           pgtype.UUID
			ctid                         pgtype.TID
			eventType, key, status, msg  pgtype.DriverBytes
			payload                      []byte
			attempt, claims, maxAttempts int
			storedAt                     time.Time
			trace, order                 pgtype.Text
			seq                          pgtype.Int8
			withheld, rescued            bool
		)
		_, err := pgx.ForEachRow(rows, []any{&locked, &ctid, &id, &eventType, &key, &payload, &attempt, &claims, &maxAttempts,
			&status, &msg, &storedAt, &trace, &order, &seq, &withheld, &rescued}, func() error {
			ro := w.routes.byTypeKey[string(eventType)][string(key)]
			if ro == nil {
				return fmt.Errorf("claimed a row of an unregistered pair (%q, %q)", eventType, key)
			}
			rid := rowID{id.Bytes, ro.key}
			if rescued {
				rescues++
				w.log.Warn("inbox: claimed a row whose lease had expired", "event_id", rid.id,
					"handler_key", ro.key, "attempt", attempt, "status", string(status))
			}
			if string(status) == string(Dead) {
				var err error = &textError{text: string(msg)}
				if rescued {
					err = &textError{text: ErrLeaseExpired.Error() + ": " + string(msg), is: []error{ErrLeaseExpired}, etype: leaseExpiredType}
				}
				died = append(died, DeadRecord{EventID: rid.id, EventType: ro.eventType, HandlerKey: ro.key, Attempts: attempt, Err: err})
				diedClaims = append(diedClaims, claims)
				if order.Valid && ro.movesOn {
					moveOn.key(ro.key, order.String, true, seq.Int64)
				}
				return nil
			}
			jobs = append(jobs, &job{rowID: rid, route: ro, payload: payload, withheld: withheld, attempt: attempt, claim: claims,
				maxAttempts: maxAttempts, storedAt: storedAt, trace: trace.String, order: order.String, seq: seq.Int64, ctid: ctid, leaseUntil: leaseUntil})
			payload = nil
			return nil
		})
		return err
	}, sql, args, before...)
	if w.cfg.hooks != nil {
		w.cfg.hooks.claim(w.log, ClaimEvent{Rows: len(jobs), Rescued: rescues, Died: len(died),
			Duration: time.Since(started), Err: err})
	}
	if err != nil {
		return 0, err
	}
	linkChains(jobs)
	endsBy := time.Now().Add(w.cfg.lease) // the database counted from before now
	for _, j := range jobs {
		j.leaseEndsBy = endsBy
	}
	if len(jobs) > 0 {
		w.send(event{kind: evClaimed, jobs: jobs})
	}
	for i, rec := range died {
		w.died(rec, diedClaims[i])
	}
	if lock, promote := moveOn.stmts(w.cfg.notify); lock != nil {
		// If this fails, maintenance makes the keys' next rows due later.
		if err := w.db.inTx(w.ioCtx, append(lock, promote...), -1, nil); err != nil {
			w.log.Warn("inbox: make the next rows of ordering keys due after dead rows", "error", err)
		}
	}
	return locked, nil
}

// linkChains links the rows a claim took of each ordering key in their
// key's order: the first of a key is its key's first unfinished row and
// runs; each of the others follows the one before it.
func linkChains(jobs []*job) {
	type orderKey struct{ key, order string }
	var keys map[orderKey][]*job
	for _, j := range jobs {
		if j.order == "" {
			continue
		}
		if keys == nil {
			keys = make(map[orderKey][]*job)
		}
		k := orderKey{j.key, j.order}
		keys[k] = append(keys[k], j)
	}
	for _, rows := range keys {
		if len(rows) < 2 {
			continue
		}
		slices.SortFunc(rows, func(a, b *job) int { return cmp.Compare(a.seq, b.seq) })
		for i, j := range rows[1:] {
			rows[i].next, j.follows = j, true
		}
	}
}
