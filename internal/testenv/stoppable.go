package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/pgserver"
)

// StoppableDatabase starts a throwaway PostgreSQL cluster of t's own
// ([pgserver.StartCluster]: initdb and pg_ctl of this machine), which a
// test may stop and start again, and returns it with a migrated pool of at
// most maxConns connections to it. Both are closed when t ends.
//
// Tests that need PostgreSQL really down use it instead of the shared
// server of [Main], which other tests are using.
func StoppableDatabase(t testing.TB, maxConns int32) (*pgserver.Cluster, *pgxpool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), findTimeout)
	defer cancel()
	c, err := pgserver.StartCluster(ctx)
	if err != nil {
		t.Fatalf("start a PostgreSQL cluster to stop: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close the cluster: %v", err)
		}
	})
	cfg, err := pgxpool.ParseConfig(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := inbox.Migrate(ctx, pool); err != nil {
		t.Fatalf("migrate the cluster: %v", err)
	}
	return c, pool
}
