package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pginbox/inbox/internal/pgserver"
)

// chromiumPath is Debian's Chromium.
const chromiumPath = "/usr/bin/chromium"

// database creates a database for the test, dropped when it ends, on the
// server the core module's tests use (internal/pgserver:
// INBOX_TEST_DATABASE_URL, else Docker, else local server binaries), and
// returns its URL. It fails the test, saying how to get a server, when
// none is found.
func database(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := pgserver.Find(ctx)
	if err != nil {
		t.Fatalf("the browser test needs PostgreSQL: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	url, drop, err := srv.CreateDatabase(ctx)
	if err != nil {
		t.Fatalf("create the test database on %s: %v", srv.Source, err)
	}
	t.Cleanup(func() {
		if err := drop(context.Background()); err != nil {
			t.Errorf("drop the test database: %v", err)
		}
	})
	return url
}

// browser starts headless Chromium for the test, with a fresh profile and
// nothing that reaches the network by itself, and returns a context for
// its first tab. The browser ends with the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := exec.LookPath(chromiumPath); err != nil {
		t.Fatalf("the browser test needs Chromium at %s: apt-get install chromium (%v)", chromiumPath, err)
	}
	// A fresh profile. Chromium's helper processes may still write in it
	// for a moment after the browser exits, so its removal is retried
	// (t.TempDir's is not).
	profile, err := os.MkdirTemp("", "inbox-e2e-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		err := eventually(context.Background(), 10*time.Second, func(context.Context) error { return os.RemoveAll(profile) })
		if err != nil {
			t.Errorf("remove the browser's profile: %v", err)
		}
	})
	out := &tail{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 900),
		chromedp.CombinedOutput(out),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc() // waits for the browser to exit
	})
	// The first Do starts the browser; it must have no deadline, which
	// would end the browser with it, so the wait is bounded here.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("start Chromium (%s): %v\n%s", chromiumPath, err, out)
		}
	case <-time.After(time.Minute):
		t.Fatalf("Chromium (%s) did not start within a minute:\n%s", chromiumPath, out)
	}
	return ctx
}

// tail keeps the last lines a process wrote, for error messages.
type tail struct {
	mu    sync.Mutex
	lines []string
}

func (w *tail) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines = append(w.lines, strings.Split(strings.TrimRight(string(p), "\n"), "\n")...)
	if len(w.lines) > 40 {
		w.lines = w.lines[len(w.lines)-40:]
	}
	return len(p), nil
}

func (w *tail) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.lines, "\n")
}

// eventually runs check until it returns nil or within has passed; it
// returns check's last error. Errors of the browser while a page reloads
// are retried like any other.
func eventually(ctx context.Context, within time.Duration, check func(context.Context) error) error {
	deadline := time.Now().Add(within)
	for {
		one, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := check(one)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("after %v: %w", within, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}
