package testenv_test

import (
	"errors"
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
