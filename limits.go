package inbox

import (
	"context"
	"fmt"
	"time"
)

// ensureProgressIndex builds, for an Inbox with a handler that has a
// global concurrency limit ([HandlerGlobalConcurrency]), the index its
// claims count the rows in progress through, if it is missing or invalid:
// CONCURRENTLY, so Sets and workers go on while it builds (on a big table,
// Start waits for the build). Without [WithoutMigrations] only: with it,
// a missing index is reported, and the claims of limited handlers count
// rows in progress without it, more slowly.
//
// The index is not a migration because every claim and result write of
// every Inbox would pay for it, used or not.
func (i *Inbox) ensureProgressIndex(ctx context.Context) error {
	limited := false
	for _, r := range i.routes.list {
		limited = limited || r.globalLimit > 0
	}
	if !limited {
		return nil
	}
	if valid, _, err := i.progressIndex(ctx); err != nil || valid {
		return err
	}
	if !i.cfg.migrate {
		i.cfg.logger.Warn("inbox: index inbox_records_progress_idx is missing; claims of handlers with a global concurrency limit count rows in progress without it, more slowly: start an Inbox without WithoutMigrations once, or run: " + createProgressIndexSQL)
		return nil
	}
	if i.cfg.pooler {
		// A session lock means nothing behind a transaction pooler: build
		// it, and take another instance's build for this one's.
		_, err := i.db.exec(ctx, createProgressIndexSQL)
		valid, exists, qerr := i.progressIndex(ctx)
		switch {
		case err != nil && (qerr != nil || !exists):
			return fmt.Errorf("build the index of rows in progress: %w", err)
		case qerr == nil && exists && !valid:
			// IF NOT EXISTS leaves the leftover of a failed build as it is.
			i.cfg.logger.Warn("inbox: index inbox_records_progress_idx is invalid (being built by another instance, or left by a build that failed); if it stays so, claims of handlers with a global concurrency limit count rows in progress without it, more slowly: run " + dropProgressIndexSQL + " and start an Inbox again")
		}
		return nil
	}
	// One Inbox at a time builds it: an index being built is invalid until
	// it is done, and must not be taken for the leftover of a failed build.
	// The others try the lock again now and then, in short statements (a
	// CONCURRENTLY build waits for every transaction that runs while it
	// starts).
	conn, err := i.db.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("build the index of rows in progress: %w", err)
	}
	defer conn.Release()
	for {
		var got bool
		if err := conn.QueryRow(ctx, progressBuildLockSQL).Scan(&got); err != nil {
			return fmt.Errorf("build the index of rows in progress: %w", err)
		}
		if got {
			break
		}
		if valid, _, err := i.progressIndex(ctx); err != nil || valid {
			return err
		}
		if !sleep(100*time.Millisecond, ctx.Done()) {
			return fmt.Errorf("build the index of rows in progress: another instance builds it: %w", ctx.Err())
		}
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), progressBuildUnlockSQL) }() // else it ends with the session
	valid, exists, err := i.progressIndex(ctx)
	if err != nil || valid {
		return err
	}
	if exists { // invalid: a build that failed half-way
		if _, err := conn.Exec(ctx, dropProgressIndexSQL); err != nil {
			return fmt.Errorf("drop the invalid index of rows in progress: %w", err)
		}
	}
	i.cfg.logger.Info("inbox: building the index of rows in progress, for handlers with a global concurrency limit")
	if _, err := conn.Exec(ctx, createProgressIndexSQL); err != nil {
		return fmt.Errorf("build the index of rows in progress: %w", err)
	}
	return nil
}

// progressIndex reports whether the index of rows in progress is valid,
// and whether it exists.
func (i *Inbox) progressIndex(ctx context.Context) (valid, exists bool, err error) {
	if err := i.db.queryRow(ctx, progressIndexSQL).Scan(&valid, &exists); err != nil {
		return false, false, fmt.Errorf("look up the index of rows in progress: %w", err)
	}
	return valid, exists, nil
}
