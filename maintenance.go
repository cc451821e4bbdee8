package inbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"time"
)

// eraseBatch is the most rows one retention statement deletes.
const eraseBatch = 10000

// beat records that this worker is alive, until 3 leases from now.
func (w *worker) beat(ctx context.Context) error {
	host, _ := os.Hostname()
	_, err := w.ib.pool.Exec(ctx, workerBeatSQL, w.id, host, os.Getpid(), w.routes.eventTypes,
		(3 * w.cfg.lease).Milliseconds())
	if err != nil {
		return fmt.Errorf("record worker heartbeat: %w", err)
	}
	return nil
}

// maintainLoop beats once per lease and runs retention every erase
// interval, the first run after a random part of the first interval (at
// most a minute) so instances started together do not erase together.
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
			if err := w.beat(w.ctx); err != nil && w.ctx.Err() == nil {
				w.report(fmt.Errorf("inbox: %w", err))
			}
			if _, err := w.ib.pool.Exec(w.ctx, workerPruneSQL); err != nil && w.ctx.Err() == nil {
				w.report(fmt.Errorf("inbox: prune worker heartbeats: %w", err))
			}
		case <-erase.C:
			n, err := eraseFinished(w.ctx, w.ib, time.Now().AddDate(0, 0, -w.cfg.retentionDays))
			if err != nil && w.ctx.Err() == nil {
				w.report(fmt.Errorf("inbox: retention: %w", err))
			}
			if n > 0 {
				w.log.Info("inbox: retention erased rows", "rows", n, "window_days", w.cfg.retentionDays)
			}
			erase.Reset(w.cfg.eraseInterval)
		}
	}
}

// eraseFinished deletes done and dead rows last changed before cutoff, in batches,
// and returns how many it deleted.
func eraseFinished(ctx context.Context, ib *Inbox, cutoff time.Time) (int64, error) {
	var total int64
	for {
		tag, err := ib.pool.Exec(ctx, eraseSQL, cutoff, eraseBatch)
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < eraseBatch {
			return total, nil
		}
	}
}
