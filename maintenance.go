package inbox

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// retentionChunk is how many blocks (of 8 KiB by default) one retention
// statement covers: at most about 16 MiB of table, a few thousand rows.
const retentionChunk = 2048

// beat records that this worker is alive, until 3 leases from now.
func (w *worker) beat(ctx context.Context) error {
	host, _ := os.Hostname()
	_, err := w.db.exec(ctx, workerBeatSQL, pgUUID(w.id), host, os.Getpid(), w.routes.eventTypes,
		(3 * w.cfg.lease).Milliseconds())
	if err != nil {
		return fmt.Errorf("record worker heartbeat: %w", err)
	}
	return nil
}

// maintainLoop beats, folds the table's counters and adopts orphaned
// dead callbacks once per lease,
// and tries to run retention every erase interval, the first time after a
// random part of the first interval (at most a minute) so that instances
// started together do not try together. Of the instances sharing a table,
// one at a time runs retention, once per interval.
func (w *worker) maintainLoop() {
	defer w.background.Done()
	beat := time.NewTicker(w.cfg.lease)
	defer beat.Stop()
	erase := time.NewTimer(time.Duration(rand.Float64() * float64(min(w.cfg.eraseInterval, time.Minute))))
	defer erase.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-beat.C:
			// A heartbeat cancelled in flight could still commit after
			// Stop deleted the worker's row (a cancel request does not
			// stop a statement the server has started), leaving a live
			// heartbeat behind: it runs to its end, within a lease.
			bctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), w.cfg.lease)
			w.maintain(w.beat(bctx), "")
			cancel()
			w.maintain(foldCounts(w.ctx, w.db), "fold the table's counters")
			_, err := w.db.exec(w.ctx, workerPruneSQL)
			w.maintain(err, "prune worker heartbeats")
			if w.cfg.hasDead {
				tag, err := w.db.exec(w.ctx, adoptCallbacksSQL, pgUUID(w.id), w.routes.pairTypes, w.routes.pairKeys, 10*deadPage)
				w.maintain(err, "adopt dead callbacks of stopped workers")
				if err == nil && tag.RowsAffected() > 0 {
					w.log.Info("inbox: adopted dead callbacks owed by workers that are gone", "rows", tag.RowsAffected())
					w.deadCalls.signal()
				}
			}
		case <-erase.C:
			w.maintain(w.retention(w.ctx), "retention")
			erase.Reset(w.cfg.eraseInterval)
		}
	}
}

// maintain reports a maintenance error, unless the worker is stopping.
func (w *worker) maintain(err error, what string) {
	if err == nil || w.ctx.Err() != nil {
		return
	}
	if what != "" {
		err = fmt.Errorf("%s: %w", what, err)
	}
	w.report(fmt.Errorf("inbox: %w", err))
}

// retention runs retention if it is due and no other instance runs it.
func (w *worker) retention(ctx context.Context) (err error) {
	lease := max(time.Minute, 3*w.cfg.lease)
	take := func() (bool, error) {
		var ok bool
		err := w.db.queryRow(ctx, retentionLeaseSQL, pgUUID(w.id), lease.Milliseconds(), w.cfg.eraseInterval.Milliseconds()).Scan(&ok)
		if isNoRows(err) {
			return false, nil
		}
		return ok, err
	}
	ok, err := take()
	if err != nil || !ok {
		return err
	}
	now := time.Now()
	var deleted, erased int64
	if w.cfg.hooks != nil {
		defer func() {
			w.cfg.hooks.retention(w.log, RetentionEvent{RowsDeleted: deleted, PayloadsErased: erased, Duration: time.Since(now), Err: err})
		}()
	}
	dedup := now.AddDate(0, 0, -w.cfg.retentionDays)
	payloads := now.AddDate(0, 0, -w.cfg.payloadDays)
	deleted, erased, err = eraseFinished(ctx, w.db, dedup, payloads, func(int64, int64) error {
		ok, err := take()
		if err != nil {
			return fmt.Errorf("renew the retention lease: %w", err)
		}
		if !ok {
			return errors.New("another instance took the retention lease over; it runs retention now")
		}
		return nil
	})
	if deleted > 0 || erased > 0 {
		w.log.Info("inbox: retention", "rows_deleted", deleted, "payloads_erased", erased,
			"window_days", w.cfg.retentionDays, "payload_window_days", w.cfg.payloadDays)
	}
	if err != nil {
		return err
	}
	if _, err := pruneHistory(ctx, w.db, dedup); err != nil {
		return fmt.Errorf("delete old history: %w", err)
	}
	if n, err := promoteStranded(ctx, w.db, w.cfg.notify); err != nil {
		return fmt.Errorf("make the next rows of ordering keys due: %w", err)
	} else if n > 0 {
		w.log.Info("inbox: made due the next rows of ordering keys whose rows before were deleted", "keys", n)
	}
	_, err = w.db.exec(ctx, retentionDoneSQL, pgUUID(w.id))
	return err
}

// strandedBatch is how many stranded ordering keys one transaction of
// promoteStranded makes move on.
const strandedBatch = 1000

// promoteStranded makes due the first row of each ordering key that waits
// with nothing before it (its predecessor was deleted), batch by batch,
// each batch under its keys' locks, waking idle workers if notify. It
// returns how many keys it found.
func promoteStranded(ctx context.Context, d db, notify bool) (int, error) {
	total := 0
	for {
		var stranded promotions
		rows, err := d.query(ctx, strandedSQL, strandedBatch)
		if err != nil {
			return total, err
		}
		var k, o string
		if _, err := pgx.ForEachRow(rows, []any{&k, &o}, func() error {
			stranded.key(k, o, false, fromStart)
			return nil
		}); err != nil {
			return total, err
		}
		n := len(stranded.keys)
		if n == 0 {
			return total, nil
		}
		lock, promote := stranded.stmts(notify)
		if err := d.inTx(ctx, append(lock, promote...), -1, nil); err != nil {
			return total, err
		}
		total += n
		if n < strandedBatch {
			return total, nil
		}
	}
}

// eraseFinished walks the table in chunks of blocks, deleting done and dead
// rows last changed before dedup and erasing the payloads of done rows last
// changed before payloads. keep is called between chunks, with the rows
// deleted and payloads erased so far, and stops the walk when it fails. Rows moved by concurrent updates into blocks already
// walked wait for the next run.
func eraseFinished(ctx context.Context, d db, dedup, payloads time.Time, keep func(deleted, erased int64) error) (deleted, erased int64, err error) {
	var blocks int64
	if err := d.queryRow(ctx, tableBlocksSQL).Scan(&blocks); err != nil {
		return 0, 0, err
	}
	if payloads.Before(dedup) {
		payloads = dedup // nothing to erase that is not deleted
	}
	for from := int64(0); from < blocks; from += retentionChunk {
		if from > 0 {
			if err := keep(deleted, erased); err != nil {
				return deleted, erased, err
			}
		}
		lo := pgtype.TID{BlockNumber: uint32(from), Valid: true}
		hi := pgtype.TID{BlockNumber: uint32(min(from+retentionChunk, 1<<32-1)), Valid: true}
		var del, er int64
		if err := d.queryRow(ctx, retentionChunkSQL, lo, hi, dedup, payloads).Scan(&del, &er); err != nil {
			return deleted, erased, err
		}
		deleted, erased = deleted+del, erased+er
	}
	return deleted, erased, nil
}
