package testenv_test

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pginbox/inbox/internal/testenv"
)

// parkLeakCanary blocks until release closes: its name is in its stack.
func parkLeakCanary(release <-chan struct{}) { <-release }

func TestLeaked(t *testing.T) {
	release := make(chan struct{})
	go parkLeakCanary(release)
	got := testenv.Leaked(50*time.Millisecond, "testenv_test.parkLeakCanary")
	if !strings.Contains(got, "parkLeakCanary") {
		t.Fatalf("Leaked missed a parked goroutine: %q", got)
	}
	close(release)
	if got := testenv.Leaked(5*time.Second, "testenv_test.parkLeakCanary", "testenv_test.TestLeaked"); got != "" {
		t.Fatalf("Leaked reports a goroutine that ended, or its caller:\n%s", got)
	}
}

func TestPoll(t *testing.T) {
	n := 0
	if err := testenv.Poll(time.Second, func() (bool, error) { n++; return n == 3, nil }); err != nil || n != 3 {
		t.Fatalf("Poll = %v after %d calls; want nil after 3", err, n)
	}
	boom := errors.New("boom")
	if err := testenv.Poll(time.Second, func() (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Fatalf("Poll = %v; want the condition's error", err)
	}
	if err := testenv.Poll(30*time.Millisecond, func() (bool, error) { return false, nil }); err == nil ||
		!strings.Contains(err.Error(), "timed out after 30ms") {
		t.Fatalf("Poll = %v; want a timeout", err)
	}
}

// fatalTB is a testing.TB whose Fatalf records its message and ends the
// goroutine, as testing's does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestHold(t *testing.T) {
	n := 0
	start := time.Now()
	testenv.Hold(t, 100*time.Millisecond, "holding", func() error { n++; return nil })
	if took := time.Since(start); took < 100*time.Millisecond || n < 2 {
		t.Fatalf("Hold returned after %v and %d checks; want at least 100ms and several checks", took, n)
	}

	f := &fatalTB{TB: t}
	calls := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		testenv.Hold(f, time.Minute, "PostgreSQL is down", func() error {
			if calls++; calls == 3 {
				return errors.New("boom")
			}
			return nil
		})
	}()
	<-done
	if f.msg != "while PostgreSQL is down: boom" || calls != 3 {
		t.Fatalf("Hold failed with %q after %d checks; want %q after 3", f.msg, calls, "while PostgreSQL is down: boom")
	}
}

func TestKillSize(t *testing.T) {
	t.Setenv("INBOX_KILL_FULL", "")
	if m, k := testenv.KillSize(); m != 3000 || k != 6 {
		t.Fatalf("KillSize() = %d, %d; want 3000, 6", m, k)
	}
	t.Setenv("INBOX_KILL_FULL", "1")
	if m, k := testenv.KillSize(); m != 10000 || k != 12 {
		t.Fatalf("KillSize() = %d, %d; want 10000, 12 with INBOX_KILL_FULL=1", m, k)
	}
}
