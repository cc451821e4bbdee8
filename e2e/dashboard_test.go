package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/dashboard"
)

// xss is outside text that must reach the browser as text.
const xss = `<script>alert(1)</script>`

// The seeded rows: event types, their handlers and how many events of
// each are stored.
const (
	created   = 4 // order_created: audit done, ship dead (carrier timeouts) until replayed
	paid      = 3 // order_paid: invoice dead, its error and payload holding xss
	shipped   = 5 // order_shipped: notify done
	cancelled = 2 // order_cancelled: refund, paused before they were stored: pending

	seededDone = created + shipped // done rows
	seededDead = created + paid    // dead rows, in two failure groups
)

// screenshotPath is where INBOX_SCREENSHOT=1 writes the overview's
// screenshot, for the README.
var screenshotPath = filepath.Join("..", "docs", "dashboard.png")

// overview is what the overview page shows, read from its DOM.
type overview struct {
	Pairs     map[string]map[string]int64 `json:"pairs"`
	Paused    map[string]bool             `json:"paused"`
	TotalDone int64                       `json:"totalDone"`
	TotalDead int64                       `json:"totalDead"`
}

// readOverview reads the figures of the overview as the page shows them:
// the text of each cell, without thousands separators.
const readOverview = `(() => {
  const num = (el) => el ? parseInt(el.textContent.replace(/,/g, ""), 10) : -1;
  const pairs = {}, paused = {};
  for (const tr of document.querySelectorAll("tr[data-pair]")) {
    const row = {};
    for (const td of tr.querySelectorAll("td[data-status]")) row[td.dataset.status] = num(td);
    pairs[tr.dataset.pair] = row;
    paused[tr.dataset.pair] = tr.querySelector(".badge.paused") !== null;
  }
  return {pairs, paused, totalDone: num(document.getElementById("total-done")), totalDead: num(document.getElementById("total-dead"))};
})()`

func (o overview) count(pair, status string) int64 {
	n, ok := o.Pairs[pair][status]
	if !ok {
		return -1
	}
	return n
}

func TestDashboardInBrowser(t *testing.T) {
	dbURL := database(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelError}))

	// The inbox: ship fails while shipBroken is set, invoice always fails;
	// one attempt each, so a failure is dead at once.
	var shipBroken atomic.Bool
	shipBroken.Store(true)
	reg := inbox.NewRegistry()
	ok := func(context.Context, []byte) error { return nil }
	reg.On("order_created",
		inbox.HandlerFunc("audit", ok),
		inbox.HandlerFunc("ship", func(_ context.Context, p []byte) error {
			if shipBroken.Load() {
				return fmt.Errorf("carrier timeout after 30s for order %d", len(p))
			}
			return nil
		}))
	reg.On("order_paid", inbox.HandlerFunc("invoice", func(_ context.Context, p []byte) error {
		return fmt.Errorf("tax service rejected %s for invoice %d", xss, len(p))
	}))
	reg.On("order_shipped", inbox.HandlerFunc("notify", ok))
	reg.On("order_cancelled", inbox.HandlerFunc("refund", ok))
	ib, err := inbox.New(pool, reg,
		inbox.WithMaxRetryAttempt(1),
		inbox.WithIterationRate(20*time.Millisecond),
		inbox.WithRetryBackoff(5*time.Millisecond, 20*time.Millisecond),
		inbox.WithLease(time.Second),
		inbox.WithLogger(logger))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := ib.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ib.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	admin := ib.Admin()
	if err := admin.Pause(ctx, "order_cancelled", "refund", "e2e", "refunds wait for the bank's maintenance"); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	var paidIDs []uuid.UUID
	var recs []*inbox.Record
	add := func(n int, eventType, payload string) {
		for i := range n {
			id := uuid.New()
			if eventType == "order_paid" {
				paidIDs = append(paidIDs, id)
			}
			r, err := inbox.NewRecord(id, eventType, fmt.Appendf(nil, payload, i))
			if err != nil {
				t.Fatalf("NewRecord: %v", err)
			}
			recs = append(recs, r)
		}
	}
	add(created, "order_created", `{"order":%d,"sku":"B-12"}`)
	add(paid, "order_paid", `{"invoice":%d,"note":"`+xss+`"}`)
	add(shipped, "order_shipped", `{"order":%d,"carrier":"DHL"}`)
	add(cancelled, "order_cancelled", `{"order":%d,"amount":"12.50"}`)
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatalf("Set: %v", err)
	}
	want := map[string]map[string]int64{
		"order_created/audit":    {"done": created, "dead": 0, "pending": 0},
		"order_created/ship":     {"done": 0, "dead": created, "pending": 0},
		"order_paid/invoice":     {"done": 0, "dead": paid, "pending": 0},
		"order_shipped/notify":   {"done": shipped, "dead": 0, "pending": 0},
		"order_cancelled/refund": {"done": 0, "dead": 0, "pending": cancelled},
	}
	waitStats(t, admin, want)

	// Two dashboards on the same inbox: still (no refresh) for reading,
	// clicking and the screenshot; live (refreshing every second) to see
	// the page follow the replay by itself.
	still := newServer(t, admin, -1, logger)
	live := newServer(t, admin, time.Second, logger)
	b := browser(t)
	watch := watchPage(t, b)

	// The overview shows the seeded figures.
	if err := chromedp.Do(b, chromedp.Navigate(still+"/")); err != nil {
		t.Fatalf("open the overview: %v", err)
	}
	o, err := chromedp.Run(b, chromedp.Evaluate[overview](readOverview))
	if err != nil {
		t.Fatalf("read the overview: %v", err)
	}
	for pair, statuses := range want {
		for status, n := range statuses {
			if got := o.count(pair, status); got != n {
				t.Errorf("overview: %s %s = %d, want %d", pair, status, got, n)
			}
		}
	}
	if o.TotalDone != seededDone || o.TotalDead != seededDead {
		t.Errorf("overview totals: %d done, %d dead; want %d, %d", o.TotalDone, o.TotalDead, seededDone, seededDead)
	}
	if !o.Paused["order_cancelled/refund"] || o.Paused["order_created/ship"] {
		t.Errorf("overview paused badges: %v, want order_cancelled/refund only", o.Paused)
	}
	if os.Getenv("INBOX_SCREENSHOT") == "1" {
		png, err := chromedp.Run(b, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if err := os.WriteFile(screenshotPath, png, 0o644); err != nil {
			t.Fatalf("write the screenshot: %v", err)
		}
		t.Logf("wrote %s (%d bytes)", screenshotPath, len(png))
	}

	// Outside text is text: the error and the payload holding a script
	// element show as its characters, and no script runs.
	if err := chromedp.Do(b, chromedp.Navigate(still+"/dead")); err != nil {
		t.Fatalf("open the dead page: %v", err)
	}
	groups, err := chromedp.Run(b, chromedp.Evaluate[int](`document.querySelectorAll("article.group").length`))
	if err != nil || groups != 2 {
		t.Errorf("the dead page shows %d groups (%v), want 2", groups, err)
	}
	sample, err := chromedp.Run(b, chromedp.TextContent(chromedp.CSS(`article[data-pair="order_paid/invoice"] pre.sample`)))
	if err != nil || !strings.Contains(sample, "tax service rejected "+xss+" for invoice") {
		t.Errorf("the invoice group's error shows as %q (%v), want the text with %s", sample, err, xss)
	}
	scripts, err := chromedp.Run(b, chromedp.Evaluate[int](
		`Array.from(document.scripts).filter(s => !s.src || s.textContent.includes("alert")).length + document.querySelectorAll("main script").length`))
	if err != nil || scripts != 0 {
		t.Errorf("the dead page has %d script elements other than its own (%v)", scripts, err)
	}
	if err := chromedp.Do(b, chromedp.Navigate(still+"/events/"+paidIDs[0].String())); err != nil {
		t.Fatalf("open an event's page: %v", err)
	}
	payload, err := chromedp.Run(b, chromedp.TextContent(chromedp.CSS(`#payload`)))
	if err != nil || !strings.Contains(payload, `"note": "`+xss+`"`) {
		t.Errorf("the payload shows as %q (%v), want the text with %s", payload, err, xss)
	}

	// Replay the carrier timeouts, the carrier being back: the click posts
	// the form, follows the redirect to the dead page and shows what was
	// done.
	shipBroken.Store(false)
	if err := chromedp.Do(b, chromedp.Navigate(still+"/dead")); err != nil {
		t.Fatalf("open the dead page: %v", err)
	}
	resp, err := chromedp.RunResponse(b, chromedp.Click(chromedp.CSS(`article[data-pair="order_created/ship"] button.replay`)))
	if err != nil {
		t.Fatalf("click replay: %v", err)
	}
	if resp.Status != 200 || !strings.HasSuffix(resp.URL, "/dead") {
		t.Errorf("after the replay: %d %s, want 200 from the dead page", resp.Status, resp.URL)
	}
	flash, err := chromedp.Run(b, chromedp.TextContent(chromedp.CSS(`#flash`)))
	if err != nil || !strings.Contains(flash, fmt.Sprintf("Replayed %d rows of group", created)) {
		t.Errorf("the flash message after the replay is %q (%v)", flash, err)
	}

	// The overview, refreshing by itself, shows the rows done.
	if err := chromedp.Do(b, chromedp.Navigate(live+"/")); err != nil {
		t.Fatalf("open the live overview: %v", err)
	}
	var last overview
	err = eventually(b, 30*time.Second, func(ctx context.Context) error {
		o, err := chromedp.Run(ctx, chromedp.Evaluate[overview](readOverview))
		if err != nil {
			return err
		}
		last = o
		if o.count("order_created/ship", "dead") != 0 || o.count("order_created/ship", "done") != created {
			return errors.New("ship's rows are not all done yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("waiting for the overview to show ship's rows done: %v; last read %+v", err, last)
	}
	if last.TotalDone != seededDone+created || last.TotalDead != seededDead-created || last.count("order_paid/invoice", "dead") != paid {
		t.Errorf("after the replay: %d done, %d dead, invoice %d dead; want %d, %d, %d",
			last.TotalDone, last.TotalDead, last.count("order_paid/invoice", "dead"), seededDone+created, seededDead-created, paid)
	}
	// And it goes on refreshing by itself.
	err = eventually(b, 10*time.Second, func(ctx context.Context) error {
		kind, err := chromedp.Run(ctx, chromedp.Evaluate[string](`performance.getEntriesByType("navigation")[0].type`))
		if err == nil && kind != "reload" {
			err = fmt.Errorf("the page's navigation is a %q", kind)
		}
		return err
	})
	if err != nil {
		t.Errorf("the live overview does not reload itself: %v", err)
	}
	watch.check(t)
}

// waitStats waits until the inbox's figures are want's.
func waitStats(t *testing.T, admin *inbox.Admin, want map[string]map[string]int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := eventually(ctx, 30*time.Second, func(ctx context.Context) error {
		stats, err := admin.Stats(ctx)
		if err != nil {
			return err
		}
		got := map[string]map[string]int64{}
		for _, h := range stats {
			got[h.EventType+"/"+h.HandlerKey] = map[string]int64{"done": h.Done, "dead": h.Dead, "pending": h.Pending}
		}
		for pair, statuses := range want {
			for status, n := range statuses {
				if got[pair][status] != n {
					return fmt.Errorf("%s %s = %d, want %d", pair, status, got[pair][status], n)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("seeding: %v", err)
	}
}

// newServer serves a dashboard with actions over admin, refreshing every
// refresh (negative: never), and returns its URL.
func newServer(t *testing.T, admin *inbox.Admin, refresh time.Duration, logger *slog.Logger) string {
	t.Helper()
	h, err := dashboard.New(admin, dashboard.Options{Actions: true, Actor: "e2e", Refresh: refresh, Logger: logger})
	if err != nil {
		t.Fatalf("dashboard.New: %v", err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// pageWatch records what the pages did that they must not: open a dialog
// (an alert of injected script), throw, or log an error (such as a
// Content-Security-Policy violation).
type pageWatch struct {
	mu       sync.Mutex
	problems []string
}

func watchPage(t *testing.T, ctx context.Context) *pageWatch {
	w := &pageWatch{}
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	console := chromedp.Console(ctx)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			w.add("a dialog opened: " + ev.Message)
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
	}()
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == chromedp.ConsoleError {
				w.add(fmt.Sprintf("console %s: %s (%s)", m.Type, m.Text, m.URL))
			}
		}
	}()
	return w
}

func (w *pageWatch) add(p string) {
	w.mu.Lock()
	w.problems = append(w.problems, p)
	w.mu.Unlock()
}

func (w *pageWatch) check(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.problems {
		t.Errorf("in the browser: %s", p)
	}
}

// testWriter writes log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
