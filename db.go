package inbox

import (
	"context"
	"errors"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// db runs the package's statements on the user's pool, in an exec mode
// that suits the pool.
type db struct {
	pool *pgxpool.Pool
	// mode, when set, is passed with every statement, overriding the
	// pool's default exec mode for the package's own statements.
	mode pgx.QueryExecMode
	// batches says whether statements may be sent as a pgx batch. A batch
	// always runs in the connection's default mode, which behind a
	// transaction pooler may be one that prepares named statements.
	batches bool
}

// newDB picks the exec mode of the package's statements. Behind a
// transaction pooler, modes that rely on prepared statements surviving
// from one transaction to the next (the statement cache; describe-exec,
// whose describe and execute are separate round trips) are replaced by
// pgx's cache-describe mode: the unnamed statement, parsed, bound and run
// in one round trip, with binary parameters. Describe-exec is replaced
// without a pooler too: cache-describe does the same in one round trip.
// Exec and simple-protocol modes are kept: a proxy that needs them may not
// speak the rest of the extended protocol.
func newDB(pool *pgxpool.Pool, pooler bool) db {
	d := db{pool: pool, batches: true}
	switch pool.Config().ConnConfig.DefaultQueryExecMode {
	case pgx.QueryExecModeDescribeExec:
		d.mode, d.batches = pgx.QueryExecModeCacheDescribe, !pooler
	case pgx.QueryExecModeCacheStatement:
		if pooler {
			d.mode, d.batches = pgx.QueryExecModeCacheDescribe, false
		}
	}
	return d
}

// args prepends the exec mode to a statement's arguments when it differs
// from the pool's.
func (d db) args(args []any) []any {
	if d.mode == 0 {
		return args
	}
	return append([]any{d.mode}, args...)
}

func (d db) exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return d.pool.Exec(ctx, sql, d.args(args)...)
}

func (d db) query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return d.pool.Query(ctx, sql, d.args(args)...)
}

func (d db) queryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return d.pool.QueryRow(ctx, sql, d.args(args)...)
}

// stmt is a statement with its arguments.
type stmt struct {
	sql  string
	args []any
}

// noFlush runs sql after noFlushSQL in one transaction, passing its rows to
// scan. The statements before, if any, run between the two.
func (d db) noFlush(ctx context.Context, scan func(pgx.Rows) error, sql string, args []any, before ...stmt) error {
	return d.inTx(ctx, append(append([]stmt{{sql: noFlushSQL}}, before...), stmt{sql, args}), len(before)+1, scan)
}

// tidOnly runs sql after tidOnlySQL in one transaction, passing its rows
// to scan. The statements before and after, if any, run before and after
// sql, in the transaction.
func (d db) tidOnly(ctx context.Context, scan func(pgx.Rows) error, sql string, args []any, before, after []stmt) error {
	return d.around(ctx, tidOnlySQL, scan, sql, args, before, after)
}

// keyOnly runs sql after keyOnlySQL in one transaction, passing its rows
// to scan. The statements before and after, if any, run before and after
// sql, in the transaction.
func (d db) keyOnly(ctx context.Context, scan func(pgx.Rows) error, sql string, args []any, before, after []stmt) error {
	return d.around(ctx, keyOnlySQL, scan, sql, args, before, after)
}

// around runs settings, before, sql and after in one transaction, passing
// the rows of sql to scan.
func (d db) around(ctx context.Context, settings string, scan func(pgx.Rows) error, sql string, args []any, before, after []stmt) error {
	stmts := append(append(append([]stmt{{sql: settings}}, before...), stmt{sql, args}), after...)
	return d.inTx(ctx, stmts, 1+len(before), scan)
}

// inTx runs the statements in one transaction, each in a snapshot of its
// own, passing the rows of the one at index scanned to scan: one round
// trip as a batch, or an explicit transaction where batches are not safe.
func (d db) inTx(ctx context.Context, stmts []stmt, scanned int, scan func(pgx.Rows) error) error {
	if d.batches {
		b := &pgx.Batch{}
		for i, s := range stmts {
			q := b.Queue(s.sql, s.args...)
			if i == scanned {
				q.Query(scan)
			}
		}
		return d.pool.SendBatch(ctx, b).Close()
	}
	return pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		for i, s := range stmts {
			if i != scanned {
				if _, err := tx.Exec(ctx, s.sql, d.args(s.args)...); err != nil {
					return err
				}
				continue
			}
			rows, err := tx.Query(ctx, s.sql, d.args(s.args)...)
			if err != nil {
				return err
			}
			err = scan(rows)
			rows.Close()
			if err != nil {
				return err
			}
			if err := rows.Err(); err != nil {
				return err
			}
		}
		return nil
	})
}

// pgUUID converts an id to a parameter every exec mode can encode; a bare
// [16]byte has no text encoding.
func pgUUID(id uuid.UUID) pgtype.UUID { return pgtype.UUID{Bytes: id, Valid: true} }

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
