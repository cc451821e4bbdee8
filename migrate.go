package inbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/pginbox/inbox/migrations"
)

// VersionTable is the table in which Migrate records the inbox's applied
// migrations. It is the inbox's own, so an application's goose history in
// goose_db_version is never touched.
const VersionTable = "inbox_schema_version"

// LockTable is the table that serialises concurrent Migrate calls on one
// schema: a lease row, which works behind connection poolers, unlike a
// session-level advisory lock.
const LockTable = "inbox_schema_lock"

// minServerVersion is the oldest PostgreSQL the statements run on (TID
// range scans for retention came with version 14).
const minServerVersion = 140000

// Migrate creates or upgrades the inbox tables in the first schema of the
// pool's search_path, then checks that every table is there. It is safe to
// call from many processes at once: a lease row in [LockTable] lets one of
// them apply the migrations while the others wait, up to ten minutes. Each
// migration runs in its own transaction (an index build runs concurrently,
// outside one), so a failure leaves the schema as it was before that
// migration. A migration that needs a table's lock gives up after a few
// seconds rather than queue behind a long transaction (which would hold up
// every Set behind it), and Migrate tries it again, up to ten times.
// Migrate only ever migrates up.
//
// Migrate works behind a transaction-mode connection pooler whatever the
// pool's exec mode: it runs on a small pool of its own (at most three
// connections, with the settings and hooks of the given pool) that uses
// no prepared statements, and closes it before returning.
//
// It fails with an error wrapping [ErrSchema] when a table is missing
// although the version table records it as created (dropped by hand), and
// with [ErrUnsupportedServer] on PostgreSQL older than 14. [Inbox.Start]
// calls Migrate unless [WithoutMigrations] is given.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	if pool == nil {
		return fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	var version int
	var schema *string
	if err := pool.QueryRow(ctx, serverVersionSQL, pgx.QueryExecModeSimpleProtocol).Scan(&version, &schema); err != nil {
		return fmt.Errorf("inbox: migrate: read server version and current schema: %w", err)
	}
	if version < minServerVersion {
		return fmt.Errorf("%w: server version %d; the inbox needs PostgreSQL 14 or later", ErrUnsupportedServer, version)
	}
	if schema == nil {
		return fmt.Errorf("%w: the connection's search_path names no existing schema; create the schema or fix search_path", ErrSchema)
	}
	cfg := pool.Config()
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	cfg.MaxConns, cfg.MinConns, cfg.MinIdleConns = 3, 0, 0
	own, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	defer own.Close()
	locker, err := lock.NewPostgresTableLocker(
		lock.WithTableName(LockTable),
		lock.WithTableLockTimeout(200*time.Millisecond, 3000), // up to ten minutes
		lock.WithTableLogger(slog.New(slog.DiscardHandler)),
	)
	if err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	sqlDB := stdlib.OpenDBFromPool(own)
	defer sqlDB.Close()
	provider, err := goose.NewProvider(goose.DialectPostgres, sqlDB, migrations.FS,
		goose.WithTableName(VersionTable),
		goose.WithDisableGlobalRegistry(true),
		goose.WithLocker(locker),
	)
	if err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	if err := upRetrying(ctx, provider); err != nil {
		var partial *goose.PartialError
		if errors.As(err, &partial) && partial.Failed != nil {
			return fmt.Errorf("inbox: migrate: migration %d failed and was rolled back: %w",
				partial.Failed.Source.Version, partial.Err)
		}
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	if err := checkSchema(ctx, db{pool: pool, mode: pgx.QueryExecModeSimpleProtocol}, ""); err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	return nil
}

// lockRetries is how often Migrate tries a migration again that gave up
// waiting for a table lock (its lock_timeout), pausing a little longer each
// time.
const lockRetries = 10

// upRetrying applies the migrations, trying again when one gave up waiting
// for a lock: a migration that needs a table's lock for a moment does not
// queue behind a long transaction, holding up every Set behind it.
func upRetrying(ctx context.Context, provider *goose.Provider) error {
	for try := 1; ; try++ {
		_, err := provider.Up(ctx)
		var pgErr *pgconn.PgError
		if err == nil || try == lockRetries || !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
			return err
		}
		if !sleep(time.Duration(try)*time.Second, ctx.Done()) {
			return err
		}
	}
}

// checkSchema checks that the inbox's tables exist and that the latest
// migration was applied. fix says what else to do than run Migrate.
func checkSchema(ctx context.Context, d db, fix string) error {
	var records, workers, maintenance, versions bool
	if err := d.queryRow(ctx, schemaSQL).Scan(&records, &workers, &maintenance, &versions); err != nil {
		return fmt.Errorf("check schema: %w", err)
	}
	if !versions {
		if fix != "" {
			fix = ", or " + fix
		}
		return fmt.Errorf("%w: table %s not found in the current schema: run inbox.Migrate%s", ErrSchema, VersionTable, fix)
	}
	var applied int64
	if err := d.queryRow(ctx, schemaVersionSQL).Scan(&applied); err != nil {
		return fmt.Errorf("check schema: %w", err)
	}
	if latest := latestMigration(); applied < latest {
		return fmt.Errorf("%w: the schema is at migration %d, this release needs %d: run inbox.Migrate", ErrSchema, applied, latest)
	}
	var missing []string
	for _, t := range []struct {
		name string
		ok   bool
	}{{"inbox_records", records}, {"inbox_workers", workers}, {"inbox_maintenance", maintenance}} {
		if !t.ok {
			missing = append(missing, t.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: table %s missing from the current schema although %s records the migrations that create it as applied: it was dropped by hand. "+
			"To recreate the inbox, drop the remaining inbox tables and %s (their rows are lost), then run inbox.Migrate",
			ErrSchema, strings.Join(missing, ", "), VersionTable, VersionTable)
	}
	return nil
}

// latestMigration is the version of the newest embedded migration.
func latestMigration() int64 {
	var latest int64
	entries, _ := fs.ReadDir(migrations.FS, ".")
	for _, e := range entries {
		num, _, _ := strings.Cut(e.Name(), "_")
		if v, err := strconv.ParseInt(num, 10, 64); err == nil && v > latest {
			latest = v
		}
	}
	return latest
}
