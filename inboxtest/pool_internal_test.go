package inboxtest

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestSchemaName(t *testing.T) {
	t.Parallel()
	for hint, prefix := range map[string]string{
		"":                            "t__",
		"TestDrain/Sub-test #1":       "t_testdrain_sub_test__1_",
		strings.Repeat("Ünïcode", 20): "t__n_code_n_code_n_code_n_code_n_code_n__",
	} {
		name := schemaName(hint)
		if !strings.HasPrefix(name, prefix) || len(name) != len(prefix)+8 || len(name) > 63 {
			t.Errorf("schemaName(%q) = %q; want %q and 8 hex digits, at most 63 bytes", hint, name, prefix)
		}
	}
	if a, b := schemaName("x"), schemaName("x"); a == b {
		t.Errorf("schemaName gave %q twice", a)
	}
}

func TestDatabaseTime(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]int64{
		"inboxtest_1764512345_0a1b2c3d": 1764512345,
		"inboxtest_x_0a1b2c3d":          -1,
		"inboxtest_1764512345":          -1,
		"inbox_test_1764512345_00":      -1,
	} {
		got, ok := databaseTime(name)
		if (want < 0) == ok || ok && got != want {
			t.Errorf("databaseTime(%q) = %d, %v; want %d", name, got, ok, want)
		}
	}
}

// TestSweep is not parallel: it drops databases of this package.
func TestSweep(t *testing.T) {
	d, err := sharedDatabase()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	admin, err := pgx.Connect(ctx, d.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the cleanups below, which drop the databases with it.
	t.Cleanup(func() { admin.Close(context.Background()) })
	var now int64
	if err := admin.QueryRow(ctx, `SELECT extract(epoch FROM now())::bigint`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	old := strconv.FormatInt(now-3600, 10)
	create := func(name string) {
		t.Helper()
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		})
	}
	suffix := randomHex(4)
	abandoned := dbPrefix + old + "_" + suffix
	inUse := dbPrefix + old + "_" + suffix + "u"
	recent := dbPrefix + strconv.FormatInt(now, 10) + "_" + suffix
	foreign := "inboxtestx_" + old + "_" + suffix
	for _, name := range []string{abandoned, inUse, recent, foreign} {
		create(name)
	}
	cfg := d.cfg.ConnConfig.Copy()
	cfg.Database = inUse
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	sweep(ctx, admin, now)
	// An hour later, this binary's own database is still in use.
	sweep(ctx, admin, now+3600)

	rows, err := admin.Query(ctx, `SELECT datname FROM pg_database`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	exists := map[string]bool{}
	for _, n := range names {
		exists[n] = true
	}
	for name, want := range map[string]bool{
		abandoned: false, inUse: true, foreign: true, d.cfg.ConnConfig.Database: true,
	} {
		if exists[name] != want {
			t.Errorf("after sweep, database %s exists: %v, want %v", name, exists[name], want)
		}
	}
	// recent was old enough for the second sweep.
	if exists[recent] {
		t.Errorf("database %s, unused, was not dropped an hour after its creation", recent)
	}
}
