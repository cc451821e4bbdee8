package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// maxConns bounds the connections inboxctl opens: it runs one statement
// at a time, the dashboard a few.
const maxConns = 4

// connect opens the pool and the Admin, without checking the schema.
func (c *call) connect(ctx context.Context) (*inbox.Admin, error) {
	if c.admin != nil {
		return c.admin, nil
	}
	url := c.databaseURL
	if url == "" {
		url = c.env("DATABASE_URL")
	}
	if strings.TrimSpace(url) == "" {
		return nil, usagef("no database: pass --database-url or set DATABASE_URL")
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, usagef("bad database URL: %v", err)
	}
	if c.schema != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = c.schema
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "inboxctl"
	}
	cfg.MaxConns = maxConns
	cfg.MinConns, cfg.MinIdleConns = 0, 0
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	admin, err := inbox.NewAdmin(pool)
	if err != nil {
		pool.Close()
		return nil, err
	}
	c.pool, c.admin = pool, admin
	return admin, nil
}

// open connects and checks that the inbox's tables are there and
// migrated.
func (c *call) open(ctx context.Context) (*inbox.Admin, error) {
	admin, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	if err := admin.CheckSchema(ctx); err != nil {
		return nil, err
	}
	return admin, nil
}

// currentSchema returns the schema the connection works in ("" when its
// search_path names none that exists).
func (c *call) currentSchema(ctx context.Context) (string, error) {
	var s *string
	if err := c.pool.QueryRow(ctx, "SELECT current_schema()", pgx.QueryExecModeSimpleProtocol).Scan(&s); err != nil {
		return "", fmt.Errorf("read current schema: %w", err)
	}
	if s == nil {
		return "", nil
	}
	return *s, nil
}
