package dashboard_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/dashboard"
	"github.com/pginbox/inbox/internal/testenv"
)

const escapedXSS = `&lt;script&gt;alert(1)&lt;/script&gt;`

// deadGroup returns the fingerprint of the fixture's one dead group.
func (f *fixture) deadGroup() inbox.DeadGroup {
	f.t.Helper()
	groups, err := f.admin.DeadGroups(context.Background(), inbox.Filter{}, 0)
	if err != nil {
		f.t.Fatalf("DeadGroups: %v", err)
	}
	if len(groups) != 1 {
		f.t.Fatalf("DeadGroups: %d groups, want 1: %+v", len(groups), groups)
	}
	return groups[0]
}

func TestOutsideTextIsEscaped(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 3)
	for _, opts := range []dashboard.Options{{}, {Actions: true}} {
		h := f.handler(opts)
		for _, target := range []string{
			"/", "/dead", "/rows", "/rows?status=dead", "/events/" + f.ids[0].String(),
			"/dead?event_type=" + url.QueryEscape(xss), "/rows?error=" + url.QueryEscape(xss),
		} {
			rec := get(h, target)
			wantStatus(t, rec, http.StatusOK, "GET "+target)
			body := rec.Body.String()
			if strings.Contains(body, "<script>alert") {
				t.Errorf("GET %s (actions %v): unescaped script in the page:\n%s", target, opts.Actions, body)
			}
			// The only script element is the dashboard's own refresh.js.
			if n := strings.Count(body, "<script"); n != 1 || !strings.Contains(body, `<script src="./static/refresh.js" defer></script>`) &&
				!strings.Contains(body, `<script src="../static/refresh.js" defer></script>`) {
				t.Errorf("GET %s: %d script elements, want only refresh.js", target, n)
			}
			if target != "/" && target != "/rows" && !strings.Contains(body, escapedXSS) {
				t.Errorf("GET %s: the escaped text %s is not shown", target, escapedXSS)
			}
		}
	}
	// The payload and the error text, escaped, on the event's page.
	body := get(f.handler(dashboard.Options{}), "/events/"+f.ids[0].String()).Body.String()
	for _, want := range []string{
		`&#34;note&#34;: &#34;` + escapedXSS + `&#34;`, // the payload, as indented JSON
		`carrier refused ` + escapedXSS + ` for order`, // the row's error and its history
		`JSON (indented)`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("event page lacks %s", want)
		}
	}
}

func TestBinaryPayloadIsMarked(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 0)
	id := uuid.New()
	f.store(id, "\x00\x01\xfe<script>\xff")
	body := get(f.handler(dashboard.Options{}), "/events/"+id.String()).Body.String()
	for _, want := range []string{`<strong class="binary">binary</strong>`, "00 01 fe 3c 73 63 72 69  70 74 3e ff", "|...&lt;script&gt;.|"} {
		if !strings.Contains(body, want) {
			t.Errorf("event page with a binary payload lacks %q:\n%s", want, body)
		}
	}
}

func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 0)
	h := f.handler(dashboard.Options{Actions: true})
	for _, target := range []string{"/", "/static/style.css", "/nowhere", "/events/bad"} {
		rec := get(h, target)
		csp := rec.Header().Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: Content-Security-Policy %q lacks %q", target, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") {
			t.Errorf("GET %s: Content-Security-Policy %q allows inline code", target, csp)
		}
		if got := rec.Header().Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q", target, got)
		}
		if got := rec.Header().Get("X-Frame-Options"); got != "DENY" {
			t.Errorf("GET %s: X-Frame-Options %q", target, got)
		}
	}
	if rec := get(h, "/static/style.css"); rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/css") {
		t.Errorf("style sheet: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	if rec := get(h, "/nowhere"); rec.Code != http.StatusNotFound {
		t.Errorf("GET /nowhere: %d, want 404", rec.Code)
	}
}

func TestReadOnly(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2)
	h := f.handler(dashboard.Options{})
	g := f.deadGroup()
	for _, target := range []string{"/", "/dead", "/rows", "/events/" + f.ids[0].String(), "/workers", "/pauses"} {
		rec := get(h, target)
		wantStatus(t, rec, http.StatusOK, "GET "+target)
		body := rec.Body.String()
		if strings.Contains(body, `method="post"`) || strings.Contains(body, `name="csrf"`) {
			t.Errorf("GET %s: a read-only page renders an action form", target)
		}
		if cookieNamed(rec, "inbox_dashboard_csrf") != nil {
			t.Errorf("GET %s: a read-only page sets a CSRF cookie", target)
		}
		if !strings.Contains(body, "read-only") {
			t.Errorf("GET %s: the page does not say it is read-only", target)
		}
	}
	form := url.Values{"fingerprint": {g.Fingerprint}, "event_type": {"order_created"}, "handler_key": {"ship"}, "csrf": {"x"}}
	for _, target := range []string{"/dead/replay", "/dead/discard", "/pauses/pause", "/rows/replay", "/"} {
		rec := post(h, target, form, nil)
		wantStatus(t, rec, http.StatusForbidden, "POST "+target)
		if !strings.Contains(rec.Body.String(), "read-only") {
			t.Errorf("POST %s: the refusal does not say the dashboard is read-only", target)
		}
	}
	if st := f.stats("order_created", "ship"); st.Dead != 2 {
		t.Errorf("after refused POSTs: ship has %d dead rows, want 2", st.Dead)
	}
	if ps, err := f.admin.Pauses(context.Background()); err != nil || len(ps) != 0 {
		t.Errorf("after refused POSTs: pauses %v, %v", ps, err)
	}
}

func TestCSRF(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 3)
	h := f.handler(dashboard.Options{Actions: true})
	g := f.deadGroup()
	cookie, token := session(t, h, "/dead")
	other, otherToken := session(t, h, "/dead")
	_, foreignToken := session(t, f.handler(dashboard.Options{Actions: true}), "/dead") // another process's secret
	form := func(tok string) url.Values {
		v := url.Values{"fingerprint": {g.Fingerprint}, "event_type": {g.EventType}, "handler_key": {g.HandlerKey}, "back": {"dead"}}
		if tok != "" {
			v.Set("csrf", tok)
		}
		return v
	}
	for _, c := range []struct {
		name    string
		form    url.Values
		cookies []*http.Cookie
		headers []string
	}{
		{"no cookie, no token", form(""), nil, nil},
		{"no token", form(""), []*http.Cookie{cookie}, nil},
		{"no cookie", form(token), nil, nil},
		{"bad token", form(token[:len(token)-2] + "AA"), []*http.Cookie{cookie}, nil},
		{"another browser's token", form(otherToken), []*http.Cookie{cookie}, nil},
		{"token for another cookie", form(token), []*http.Cookie{other}, nil},
		{"another process's token", form(foreignToken), []*http.Cookie{cookie}, nil},
		{"cross-site fetch", form(token), []*http.Cookie{cookie}, []string{"Sec-Fetch-Site", "cross-site"}},
		{"foreign origin", form(token), []*http.Cookie{cookie}, []string{"Origin", "https://evil.example"}},
	} {
		rec := post(h, "/dead/replay", c.form, c.cookies, c.headers...)
		wantStatus(t, rec, http.StatusForbidden, c.name)
		if !strings.Contains(rec.Body.String(), "Refused") {
			t.Errorf("%s: the refusal does not say why:\n%s", c.name, rec.Body)
		}
		if st := f.stats("order_created", "ship"); st.Dead != 3 || st.Pending+st.InProgress+st.Done != 0 {
			t.Fatalf("%s: the refused POST changed rows: %+v", c.name, st)
		}
	}

	// The right token, from the same origin, acts.
	f.shipBroken.Store(false)
	rec := post(h, "/dead/replay", form(token), []*http.Cookie{cookie},
		"Origin", "http://example.com", "Sec-Fetch-Site", "same-origin")
	wantStatus(t, rec, http.StatusSeeOther, "replay with the right token")
	if loc := rec.Header().Get("Location"); loc != "../dead" {
		t.Errorf("replay redirects to %q, want ../dead", loc)
	}
	f.waitPair("order_created", "ship", func(h inbox.HandlerStats) bool { return h.Dead == 0 && h.Done == 3 })

	// The page it redirects to says what happened, once.
	fl := cookieNamed(rec, "inbox_dashboard_flash")
	if fl == nil {
		t.Fatal("replay left no flash message")
	}
	page := get(h, "/dead", cookie, fl)
	if !strings.Contains(page.Body.String(), "Replayed 3 rows of group "+g.Fingerprint+" (order_created / ship).") {
		t.Errorf("the page after the replay does not say what was replayed:\n%s", page.Body)
	}
	if c := cookieNamed(page, "inbox_dashboard_flash"); c == nil || c.MaxAge >= 0 {
		t.Errorf("the flash is not cleared once shown: %v", c)
	}
	// A flash not signed by the process is ignored.
	forged := &http.Cookie{Name: "inbox_dashboard_flash", Value: "b2sKZm9yZ2Vk.AAAA"}
	if body := get(h, "/dead", forged).Body.String(); strings.Contains(body, "forged") {
		t.Error("a forged flash message is shown")
	}
}

func TestReplayAndDiscardGroups(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	var logs testenv.LogLines
	h := f.handler(dashboard.Options{Actions: true, Actor: "alice",
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	g := f.deadGroup()
	cookie, token := session(t, h, "/dead")
	body := get(h, "/dead", cookie).Body.String()
	for _, want := range []string{`action="./dead/replay"`, `action="./dead/discard"`, `4 rows`, g.Fingerprint} {
		if !strings.Contains(body, want) {
			t.Errorf("dead page lacks %q", want)
		}
	}
	group := url.Values{"csrf": {token}, "fingerprint": {g.Fingerprint}, "event_type": {g.EventType}, "handler_key": {g.HandlerKey}}

	// Discard: the rows stay dead, in one group of discarded rows, which
	// can be replayed but not discarded again.
	rec := post(h, "/dead/discard", group, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusSeeOther, "discard")
	page := get(h, "/dead", cookie, cookieNamed(rec, "inbox_dashboard_flash")).Body.String()
	if !strings.Contains(page, "Discarded 4 rows of group "+g.Fingerprint) {
		t.Errorf("the page after the discard does not say so:\n%s", page)
	}
	discarded := f.deadGroup()
	if discarded.ErrorType != "inbox.discarded" || discarded.Count != 4 || !strings.Contains(discarded.Sample, "alice") {
		t.Errorf("after discard: group %+v", discarded)
	}
	if strings.Contains(page, `action="./dead/discard"`) || !strings.Contains(page, `action="./dead/replay"`) {
		t.Error("a discarded group offers discard again, or no replay")
	}

	// Replay the discarded group with the handler fixed: done.
	f.shipBroken.Store(false)
	group.Set("fingerprint", discarded.Fingerprint)
	group.Set("back", "dead?event_type=order_created")
	rec = post(h, "/dead/replay", group, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusSeeOther, "replay")
	if loc := rec.Header().Get("Location"); loc != "../dead?event_type=order_created" {
		t.Errorf("replay redirects to %q", loc)
	}
	f.waitPair("order_created", "ship", func(h inbox.HandlerStats) bool { return h.Dead == 0 && h.Done == 4 })

	// The event's history says who replayed it.
	ev := get(h, "/events/"+f.ids[0].String(), cookie).Body.String()
	if !regexp.MustCompile(`k-replayed">replayed</span>[\s\S]*?<td>alice</td>`).MatchString(ev) {
		t.Errorf("the event's history does not show alice's replay:\n%s", ev)
	}
	if !strings.Contains(logs.String(), "dashboard: replayed a dead group") {
		t.Errorf("the replay is not logged: %s", logs.String())
	}

	// Replaying the now empty group says nothing was left.
	rec = post(h, "/dead/replay", group, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusSeeOther, "replay again")
	if page := get(h, "/dead", cookie, cookieNamed(rec, "inbox_dashboard_flash")).Body.String(); !strings.Contains(page, "No row replayed") {
		t.Errorf("a replay of an empty group does not say so:\n%s", page)
	}

	// A redirect target that would leave the dashboard is not followed.
	for _, back := range []string{"//evil.example/", "https://evil.example/", `\evil`, "/dead", "../x"} {
		group.Set("back", back)
		rec = post(h, "/dead/replay", group, []*http.Cookie{cookie})
		if loc := rec.Header().Get("Location"); loc != "../dead" {
			t.Errorf("back %q: redirect to %q, want ../dead", back, loc)
		}
	}
}

func TestReplayRow(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2)
	h := f.handler(dashboard.Options{Actions: true})
	id := f.ids[1]
	cookie, token := session(t, h, "/events/"+id.String())
	f.shipBroken.Store(false)
	rec := post(h, "/rows/replay", url.Values{"csrf": {token}, "event_id": {id.String()}, "handler_key": {"ship"}}, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusSeeOther, "replay row")
	if loc := rec.Header().Get("Location"); loc != "../events/"+id.String() {
		t.Errorf("row replay redirects to %q", loc)
	}
	f.waitPair("order_created", "ship", func(h inbox.HandlerStats) bool { return h.Dead == 1 && h.Done == 1 })
	// A row that is not there: a warning, not an error.
	rec = post(h, "/rows/replay", url.Values{"csrf": {token}, "event_id": {uuid.NewString()}, "handler_key": {"ship"}}, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusSeeOther, "replay of a missing row")
	if page := get(h, "/", cookieNamed(rec, "inbox_dashboard_flash")).Body.String(); !strings.Contains(page, "was not replayed") {
		t.Errorf("the replay of a missing row does not say so:\n%s", page)
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	h := f.handler(dashboard.Options{Actions: true, Actor: "bob"})
	cookie, token := session(t, h, "/")
	pair := url.Values{"csrf": {token}, "event_type": {"order_created"}, "handler_key": {"ship"}, "reason": {xss}}
	rec := post(h, "/pauses/pause", pair, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusSeeOther, "pause")
	ps, err := f.admin.Pauses(context.Background())
	if err != nil || len(ps) != 1 || ps[0].Actor != "bob" || ps[0].EventType != "order_created" || ps[0].HandlerKey != "ship" {
		t.Fatalf("after pause: %+v, %v", ps, err)
	}
	overview := get(h, "/", cookie).Body.String()
	if !regexp.MustCompile(`data-pair="order_created/ship"[\s\S]*?badge paused[\s\S]*?Resume</button>`).MatchString(overview) {
		t.Errorf("the overview does not show the pause with a resume button:\n%s", overview)
	}
	pauses := get(h, "/pauses", cookie).Body.String()
	if !strings.Contains(pauses, "<td>bob</td>") || !strings.Contains(pauses, escapedXSS) {
		t.Errorf("the pauses page does not show the pause, its actor and its escaped reason:\n%s", pauses)
	}
	rec = post(h, "/pauses/resume", pair, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusSeeOther, "resume")
	if ps, err := f.admin.Pauses(context.Background()); err != nil || len(ps) != 0 {
		t.Fatalf("after resume: %+v, %v", ps, err)
	}
	rec = post(h, "/pauses/resume", pair, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusSeeOther, "resume again")
	if page := get(h, "/pauses", cookieNamed(rec, "inbox_dashboard_flash")).Body.String(); !strings.Contains(page, "Nothing resumed") {
		t.Errorf("a second resume does not say nothing was resumed:\n%s", page)
	}
	// A pause of nothing is bad input.
	rec = post(h, "/pauses/pause", url.Values{"csrf": {token}}, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusBadRequest, "pause of nothing")
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	h := f.handler(dashboard.Options{Actions: true})
	for _, c := range []struct{ target, want string }{
		{"/events/not-a-uuid", "is not an event id"},
		{"/event?id=12345", "is not an event id"},
		{"/event?id=" + url.QueryEscape(xss), "&#34;" + escapedXSS + "&#34; is not an event id"},
		{"/rows?status=bogus", "unknown status"},
		{"/rows?status=" + url.QueryEscape(xss), "unknown status &#34;" + escapedXSS},
		{"/rows?after=garbage", "page token"},
		{"/rows?limit=0", "limit"},
		{"/rows?since=yesterday", "is not a time"},
		{"/rows?since=2026-01-02&until=2026-01-01", "is not before until"},
		{"/rows?fingerprint=XYZ", "fingerprint"},
		{"/rows?event_id=nope", "is not a UUID"},
	} {
		rec := get(h, c.target)
		wantStatus(t, rec, http.StatusBadRequest, "GET "+c.target)
		if !strings.Contains(rec.Body.String(), c.want) {
			t.Errorf("GET %s: the page lacks %q:\n%s", c.target, c.want, rec.Body)
		}
	}
	if rec := get(h, "/events/"+uuid.NewString()); rec.Code != http.StatusNotFound || !strings.Contains(rec.Body.String(), "no row of event") {
		t.Errorf("GET of an unknown event: %d\n%s", rec.Code, rec.Body)
	}
	id := f.ids[0].String()
	if rec := get(h, "/event?id=+"+strings.ToUpper(id)+"+"); rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "./events/"+id {
		t.Errorf("search: %d to %q", rec.Code, rec.Header().Get("Location"))
	}
	cookie, token := session(t, h, "/dead")
	for _, form := range []url.Values{
		{"csrf": {token}},                              // no group
		{"csrf": {token}, "fingerprint": {"XYZ"}},      // not a fingerprint
		{"csrf": {token}, "fingerprint": {"<b>x</b>"}}, // not one either
	} {
		rec := post(h, "/dead/replay", form, []*http.Cookie{cookie})
		wantStatus(t, rec, http.StatusBadRequest, "replay "+form.Encode())
	}
	if rec := post(h, "/rows/replay", url.Values{"csrf": {token}, "event_id": {"x"}}, []*http.Cookie{cookie}); rec.Code != http.StatusBadRequest {
		t.Errorf("row replay of a bad id: %d", rec.Code)
	}
	// Text that is not UTF-8 is bad input, not a database error (Resume
	// does not check it itself).
	for _, target := range []string{"/pauses/resume", "/pauses/pause", "/dead/discard"} {
		rec := post(h, target, url.Values{"csrf": {token}, "fingerprint": {"0123456789abcdef"}, "event_type": {"\xff"}}, []*http.Cookie{cookie})
		wantStatus(t, rec, http.StatusBadRequest, target+" with text that is not UTF-8")
	}
	if st := f.stats("order_created", "ship"); st.Dead != 1 {
		t.Errorf("bad input changed rows: %+v", st)
	}
}

func TestRowsPages(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 5)
	h := f.handler(dashboard.Options{})
	seen := map[string]bool{}
	target := "/rows?status=dead&limit=2"
	for range 10 {
		rec := get(h, target)
		wantStatus(t, rec, http.StatusOK, "GET "+target)
		body := rec.Body.String()
		for _, m := range regexp.MustCompile(`data-event="([0-9a-f-]{36})" data-handler="ship"`).FindAllStringSubmatch(body, -1) {
			if seen[m[1]] {
				t.Errorf("row %s on two pages", m[1])
			}
			seen[m[1]] = true
		}
		if strings.Contains(body, `data-handler="audit"`) {
			t.Error("the dead rows' pages list a done row")
		}
		next := regexp.MustCompile(`id="next-page" rel="next" href="\./([^"]+)"`).FindStringSubmatch(body)
		if next == nil {
			break
		}
		target = "/" + strings.ReplaceAll(next[1], "&amp;", "&")
	}
	if len(seen) != 5 {
		t.Errorf("the pages listed %d dead rows, want 5", len(seen))
	}
}

func TestOverviewCounts(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 3)
	body := get(f.handler(dashboard.Options{}), "/").Body.String()
	for _, re := range []string{
		`data-pair="order_created/audit"[\s\S]*?data-status="done">3<`,
		`data-pair="order_created/ship"[\s\S]*?data-status="dead"><a href="\./dead\?event_type=order_created&amp;handler_key=ship">3</a>`,
		`id="total-done">3<`, `id="total-dead">3<`,
		`<rect class="done"`, `<rect class="dead"`,
	} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("the overview does not match %s", re)
		}
	}
	if body := get(f.handler(dashboard.Options{}), "/workers").Body.String(); !strings.Contains(body, "1 live worker.") {
		t.Errorf("the workers page does not list the running worker:\n%s", body)
	}
}

func TestDatabaseError(t *testing.T) {
	t.Parallel()
	bare := testenv.Pool(t, testenv.PoolMaxConns) // no inbox here
	admin, err := inbox.NewAdmin(bare)
	if err != nil {
		t.Fatal(err)
	}
	var logs testenv.LogLines
	h, err := dashboard.New(admin, dashboard.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/", "/dead", "/rows", "/workers", "/pauses"} {
		rec := get(h, target)
		wantStatus(t, rec, http.StatusInternalServerError, "GET "+target)
		body := rec.Body.String()
		for _, want := range []string{"The inbox&#39;s database returned an error", "tries again every 5 seconds", "does not exist", "inbox: schema missing"} {
			if !strings.Contains(body, want) {
				t.Errorf("GET %s: the error page lacks %q:\n%s", target, want, body)
			}
		}
	}
	if n := strings.Count(logs.String(), `level=ERROR msg="dashboard: request failed"`); n != 5 {
		t.Errorf("%d errors logged, want 5:\n%s", n, logs.String())
	}
}

// TestActionDatabaseError: an action that meets a database error answers
// 500 with a page that does not reload itself (which would post again).
func TestActionDatabaseError(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 0)
	var logs testenv.LogLines
	h := f.handler(dashboard.Options{Actions: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	cookie, token := session(t, h, "/pauses")
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, "ALTER TABLE inbox_pauses RENAME TO inbox_pauses_away"); err != nil {
		t.Fatal(err)
	}
	rec := post(h, "/pauses/pause", url.Values{"csrf": {token}, "event_type": {"order_created"}}, []*http.Cookie{cookie})
	if _, err := f.pool.Exec(ctx, "ALTER TABLE inbox_pauses_away RENAME TO inbox_pauses"); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, rec, http.StatusInternalServerError, "pause without the pauses table")
	body := rec.Body.String()
	if strings.Contains(body, "refresh.js") || strings.Contains(body, "http-equiv") || strings.Contains(body, "tries again") {
		t.Errorf("the error page of a POST reloads itself:\n%s", body)
	}
	if !strings.Contains(logs.String(), `msg="dashboard: request failed" method=POST path=/pauses/pause`) {
		t.Errorf("the error is not logged:\n%s", logs.String())
	}
}

func TestMountedUnderPrefix(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	h := http.StripPrefix("/ops", f.handler(dashboard.Options{Actions: true}))
	body := get(h, "/ops/events/"+f.ids[0].String()).Body.String()
	for _, want := range []string{`href="../static/style.css"`, `action="../rows/replay"`, `href="../dead"`} {
		if !strings.Contains(body, want) {
			t.Errorf("a page under a prefix lacks %s", want)
		}
	}
	cookie, token := session(t, h, "/ops/dead")
	g := f.deadGroup()
	f.shipBroken.Store(false)
	rec := post(h, "/ops/dead/replay", url.Values{"csrf": {token}, "fingerprint": {g.Fingerprint}, "back": {"dead"}}, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusSeeOther, "replay under a prefix")
	if loc, _ := url.Parse("http://x/ops/dead/replay"); loc.ResolveReference(mustURL(t, rec.Header().Get("Location"))).Path != "/ops/dead" {
		t.Errorf("the redirect %q leaves the prefix", rec.Header().Get("Location"))
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestNewChecksOptions(t *testing.T) {
	t.Parallel()
	admin, err := inbox.NewAdmin(testenv.Pool(t, testenv.PoolMaxConns))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dashboard.New(nil, dashboard.Options{}); err == nil {
		t.Error("New(nil admin) succeeded")
	}
	for _, opts := range []dashboard.Options{
		{Refresh: 500 * time.Millisecond},
		{TrustedOrigins: []string{"not an origin"}},
		{Actor: strings.Repeat("a", inbox.MaxErrorLength+1)},
		{Actor: "a\x00b"},
	} {
		if _, err := dashboard.New(admin, opts); err == nil {
			t.Errorf("New(%+v) succeeded", opts)
		}
	}
	h, err := dashboard.New(admin, dashboard.Options{Refresh: -1})
	if err != nil {
		t.Fatal(err)
	}
	// Without refresh, the page has no refresh: the 404 page needs no
	// database.
	if body := get(h, "/nowhere").Body.String(); strings.Contains(body, "refresh") && strings.Contains(body, "http-equiv") {
		t.Error("a page refreshes with Refresh < 0")
	}
}

// TestGroupWithHexIDs acts on a group whose errors hold hex tokens (their
// fingerprint's regular expression once broke the fingerprint filter):
// the replay reaches every row of the group.
func TestGroupWithHexIDs(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 3, "parcel 0x%[2]x refused %[1]s")
	f.shipBroken.Store(false)
	h := f.handler(dashboard.Options{Actions: true})
	groups, err := f.admin.DeadGroups(context.Background(), inbox.Filter{}, 0)
	if err != nil || len(groups) != 1 || groups[0].Count != 3 || !strings.Contains(groups[0].Pattern, "parcel <n> refused") {
		t.Fatalf("DeadGroups: %+v, %v", groups, err)
	}
	cookie, token := session(t, h, "/dead")
	rec := post(h, "/dead/replay", url.Values{"csrf": {token}, "fingerprint": {groups[0].Fingerprint},
		"event_type": {"order_created"}, "handler_key": {"ship"}}, []*http.Cookie{cookie})
	wantStatus(t, rec, http.StatusSeeOther, "replay")
	if page := get(h, "/dead", cookieNamed(rec, "inbox_dashboard_flash")).Body.String(); !strings.Contains(page, "Replayed 3 rows") {
		t.Errorf("the replay does not say it replayed 3 rows:\n%s", page)
	}
	f.waitPair("order_created", "ship", func(h inbox.HandlerStats) bool { return h.Dead == 0 && h.Done == 3 })
}
