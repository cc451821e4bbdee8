package inbox

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
)

// listenLoop keeps a dedicated connection listening on the inbox's channel
// and wakes the claimer on each notification. It reconnects by itself;
// after each (re)connection it wakes the claimer once, since notifications
// sent while it was away are lost. Polling stays the source of truth.
func (w *worker) listenLoop() {
	defer w.background.Done()
	for failures := 0; ; {
		err := w.listen()
		if w.ctx.Err() != nil {
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
	conn, err := pgx.ConnectConfig(w.ctx, w.ib.pool.Config().ConnConfig.Copy())
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
	w.log.Debug("inbox: listening", "channel", channel)
	signal(w.wake)
	for {
		if _, err := conn.WaitForNotification(w.ctx); err != nil {
			return err
		}
		signal(w.wake)
	}
}
