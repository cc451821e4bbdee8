package inbox

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// probeWithin is how long the listener waits for its own probe
// notification before it concludes that LISTEN does not work on its
// connection.
const probeWithin = 3 * time.Second

// listenLoop keeps a dedicated connection listening on the inbox's channel
// and wakes the claimer on each notification. It reconnects by itself;
// after each (re)connection it wakes the claimer once, since notifications
// sent while it was away are lost. Polling stays the source of truth.
//
// After each LISTEN it sends a probe notification through the pool and
// waits for it: behind a transaction-mode pooler LISTEN succeeds but no
// notification ever arrives. Then it logs a warning, reports the error,
// and leaves the workers to poll.
func (w *worker) listenLoop() {
	defer w.background.Done()
	for failures := 0; ; {
		err := w.listen()
		if w.ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrNotifyUnavailable) {
			w.log.Warn("inbox: LISTEN does not receive notifications on its connection (a transaction-mode pooler?); workers poll every iteration rate instead. Give a direct connection with WithListenConfig, or WithoutNotify to silence this")
			w.report(fmt.Errorf("inbox: listen: %w", err))
			return
		}
		failures++
		w.report(fmt.Errorf("inbox: listen for notifications: %w", err))
		if !sleep(retryDelay(failures, 100*time.Millisecond, 5*time.Second, rand.Float64()), w.ctx.Done()) {
			return
		}
	}
}

func (w *worker) listen() error {
	cfg := w.cfg.listenConfig
	if cfg == nil {
		cfg = w.db.pool.Config().ConnConfig
	}
	cfg = cfg.Copy()
	// The listener sends a handful of statements in its life: no cache.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	conn, err := pgx.ConnectConfig(w.ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	}()
	var channel string
	if err := conn.QueryRow(w.ctx, channelSQL).Scan(&channel); err != nil {
		return err
	}
	if _, err := conn.Exec(w.ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	if err := w.probe(conn); err != nil {
		return err
	}
	w.log.Debug("inbox: listening", "channel", channel)
	signal(w.wake)
	for {
		if _, err := conn.WaitForNotification(w.ctx); err != nil {
			return err
		}
		signal(w.wake)
	}
}

// probe sends a notification through the pool and waits until conn
// receives it.
func (w *worker) probe(conn *pgx.Conn) error {
	token := "probe:" + uuid.NewString()
	if _, err := w.db.exec(w.ctx, probeSQL, token); err != nil {
		return fmt.Errorf("send probe notification: %w", err)
	}
	ctx, cancel := context.WithTimeout(w.ctx, probeWithin)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil && w.ctx.Err() == nil {
				return fmt.Errorf("%w: a probe notification sent through the pool did not arrive within %v", ErrNotifyUnavailable, probeWithin)
			}
			return err
		}
		signal(w.wake)
		if n.Payload == token {
			return nil
		}
	}
}
