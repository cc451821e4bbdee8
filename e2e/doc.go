// Package e2e holds the project's end-to-end tests in a real browser: the
// web dashboard served over a real inbox on PostgreSQL, driven in headless
// Chromium through the DevTools protocol (chromedp). It is a module of its
// own, so the core module does not depend on chromedp.
//
// The tests need Debian's chromium (apt-get install chromium) and a
// PostgreSQL server: the one at INBOX_TEST_DATABASE_URL, else the local
// one at postgres://postgres@127.0.0.1:5432/postgres. Run them with
//
//	cd e2e && go test -race -count=1 ./...
//
// With INBOX_SCREENSHOT=1 the test also writes the screenshot of the
// overview that the README shows, docs/dashboard.png.
package e2e
