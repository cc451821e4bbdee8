// Package migrations holds the inbox's schema migrations, embedded in the
// binary and applied by inbox.Migrate.
package migrations

import "embed"

// FS holds the migration files.
//
//go:embed *.sql
var FS embed.FS
