package inbox

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"

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

// Migrate creates or upgrades the inbox tables in the first schema of the
// pool's search_path. It is safe to call from many processes at once: a
// session-level advisory lock, keyed by the schema, lets one of them apply
// the migrations while the others wait. Each migration runs in its own
// transaction, so a failure leaves the schema as it was before that
// migration. Migrate only ever migrates up.
//
// [Inbox.Start] calls Migrate unless [WithoutMigrations] is given.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	if pool == nil {
		return fmt.Errorf("%w: pool is nil", ErrInvalidConfig)
	}
	var schema *string
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return fmt.Errorf("inbox: migrate: read current schema: %w", err)
	}
	if schema == nil {
		return fmt.Errorf("inbox: migrate: the connection's search_path names no existing schema; create the schema or fix search_path")
	}
	h := fnv.New64a()
	h.Write([]byte("inbox migrations:" + *schema))
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(int64(h.Sum64()>>1)),
		lock.WithLockTimeout(1, 600), // poll every second, for up to 10 minutes
	)
	if err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	provider, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithTableName(VersionTable),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSessionLocker(locker),
	)
	if err != nil {
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	if _, err := provider.Up(ctx); err != nil {
		var partial *goose.PartialError
		if errors.As(err, &partial) && partial.Failed != nil {
			return fmt.Errorf("inbox: migrate: migration %d failed and was rolled back: %w",
				partial.Failed.Source.Version, partial.Err)
		}
		return fmt.Errorf("inbox: migrate: %w", err)
	}
	return nil
}
