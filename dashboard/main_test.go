package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/dashboard"
	"github.com/pginbox/inbox/internal/testenv"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, "dashboard", testenv.InboxCode, testenv.PgxPool))
}

// xss is outside text that must reach the browser as text.
const xss = `<script>alert(1)</script>`

// fixture is an inbox with seeded rows, running, and its Admin.
//
// Event type order_created has handlers "audit" (always succeeds) and
// "ship" (fails while shipBroken is set, with an error text holding xss;
// one attempt, so it dies at once). Each seeded event's payload holds xss
// too.
type fixture struct {
	t          *testing.T
	pool       *pgxpool.Pool
	ib         *inbox.Inbox
	admin      *inbox.Admin
	shipBroken atomic.Bool
	ids        []uuid.UUID
}

// errFormat, when given, is the format of ship's error (arguments: xss and
// the payload's length).
func newFixture(t *testing.T, events int, errFormat ...string) *fixture {
	t.Helper()
	format := "carrier refused %s for order %d"
	if len(errFormat) > 0 {
		format = errFormat[0]
	}
	f := &fixture{t: t, pool: testenv.MigratedPool(t)}
	f.shipBroken.Store(true)
	reg := inbox.NewRegistry()
	reg.On("order_created",
		inbox.HandlerFunc("audit", func(context.Context, []byte) error { return nil }),
		inbox.HandlerFunc("ship", func(_ context.Context, p []byte) error {
			if f.shipBroken.Load() {
				return fmt.Errorf(format, xss, len(p))
			}
			return nil
		}),
	)
	ib := testenv.Start(t, context.Background(), f.pool, reg, testenv.Fast(t, inbox.WithMaxRetryAttempt(1))...)
	f.ib, f.admin = ib, ib.Admin()
	for i := range events {
		id := uuid.New()
		f.ids = append(f.ids, id)
		f.store(id, fmt.Sprintf(`{"order":%d,"note":"%s"}`, i, xss))
	}
	f.waitPair("order_created", "ship", func(h inbox.HandlerStats) bool { return h.Dead == int64(events) })
	f.waitPair("order_created", "audit", func(h inbox.HandlerStats) bool { return h.Done == int64(events) })
	return f
}

// store stores one event of type order_created.
func (f *fixture) store(id uuid.UUID, payload string) {
	f.t.Helper()
	rec, err := inbox.NewRecord(id, "order_created", []byte(payload))
	if err != nil {
		f.t.Fatalf("NewRecord: %v", err)
	}
	if err := f.ib.Client().Set(context.Background(), rec); err != nil {
		f.t.Fatalf("Set: %v", err)
	}
}

// stats returns the figures of one pair.
func (f *fixture) stats(eventType, key string) inbox.HandlerStats {
	f.t.Helper()
	all, err := f.admin.Stats(context.Background())
	if err != nil {
		f.t.Fatalf("Stats: %v", err)
	}
	for _, h := range all {
		if h.EventType == eventType && h.HandlerKey == key {
			return h
		}
	}
	return inbox.HandlerStats{EventType: eventType, HandlerKey: key}
}

// waitPair waits until the pair's figures satisfy cond.
func (f *fixture) waitPair(eventType, key string, cond func(inbox.HandlerStats) bool) {
	f.t.Helper()
	var last inbox.HandlerStats
	err := testenv.Poll(15*time.Second, func() (bool, error) {
		last = f.stats(eventType, key)
		return cond(last), nil
	})
	if err != nil {
		f.t.Fatalf("waiting for %s/%s: %v; last figures %+v", eventType, key, err, last)
	}
}

// handler returns the fixture's dashboard.
func (f *fixture) handler(opts dashboard.Options) http.Handler {
	f.t.Helper()
	if opts.Logger == nil {
		opts.Logger = testenv.Logger(f.t)
	}
	h, err := dashboard.New(f.admin, opts)
	if err != nil {
		f.t.Fatalf("dashboard.New: %v", err)
	}
	return h
}

// get serves a GET of target.
func get(h http.Handler, target string, cookies ...*http.Cookie) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, target, nil)
	for _, c := range cookies {
		req.AddCookie(c)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// post serves a POST of form to target, with cookies and extra headers
// (name, value pairs).
func post(h http.Handler, target string, form url.Values, cookies []*http.Cookie, headers ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, target, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

var csrfFieldRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// session is a browser's CSRF cookie and the token of its forms, as a GET
// of target gave them.
func session(t *testing.T, h http.Handler, target string) (*http.Cookie, string) {
	t.Helper()
	rec := get(h, target)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: %d\n%s", target, rec.Code, rec.Body)
	}
	var cookie *http.Cookie
	for _, c := range rec.Result().Cookies() {
		if c.Name == "inbox_dashboard_csrf" {
			cookie = c
		}
	}
	if cookie == nil {
		t.Fatalf("GET %s set no CSRF cookie; cookies %v", target, rec.Result().Cookies())
	}
	if cookie.SameSite != http.SameSiteStrictMode || !cookie.HttpOnly {
		t.Errorf("CSRF cookie %v: want HttpOnly and SameSite=Strict", cookie)
	}
	m := csrfFieldRE.FindStringSubmatch(rec.Body.String())
	if m == nil {
		t.Fatalf("GET %s: no csrf field in the page", target)
	}
	return cookie, m[1]
}

// cookieNamed returns the response's cookie name, or nil.
func cookieNamed(rec *httptest.ResponseRecorder, name string) *http.Cookie {
	for _, c := range rec.Result().Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func wantStatus(t *testing.T, rec *httptest.ResponseRecorder, want int, what string) {
	t.Helper()
	if rec.Code != want {
		t.Fatalf("%s: status %d, want %d\n%s", what, rec.Code, want, rec.Body)
	}
}
