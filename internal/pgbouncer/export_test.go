package pgbouncer

// SetFallbackBinary makes Start look for pgbouncer at path instead of
// /usr/sbin/pgbouncer when it is not on PATH, until restore is called.
func SetFallbackBinary(path string) (restore func()) {
	old := fallbackBinary
	fallbackBinary = path
	return func() { fallbackBinary = old }
}
