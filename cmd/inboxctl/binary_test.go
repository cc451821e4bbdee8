package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// TestBinary builds inboxctl and runs the real program: exit codes, the
// environment, stdin from /dev/null (a character device that is no
// terminal), and SIGINT while serving.
func TestBinary(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	bin := filepath.Join(t.TempDir(), "inboxctl")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	env := append(os.Environ(), "DATABASE_URL="+testenv.URL(), "USER=binary")
	runBin := func(args ...string) result {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr // stdin: /dev/null
		err := cmd.Run()
		var exit *exec.ExitError
		code := 0
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatalf("run %v: %v", args, err)
		}
		return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	}

	wantOut(t, runBin("help"), "Exit codes:")
	wantCode(t, runBin(), 2, "Usage: inboxctl COMMAND")
	wantCode(t, runBin("frobnicate"), 2, "unknown command")
	wantCode(t, runBin("stats", "--schema", f.schema), 1, "migrate up")
	wantOut(t, runBin("migrate", "up", "--schema", f.schema), "up to date")
	r := runBin("stats", "--json", "--schema", f.schema)
	var stats jsonStats
	if err := json.Unmarshal([]byte(r.stdout), &stats); err != nil || r.code != 0 || stats.Handlers == nil {
		t.Fatalf("stats --json: %v %v", err, r)
	}
	wantCode(t, runBin("list", "--status", "asleep", "--schema", f.schema), 2, "unknown status")
	wantCode(t, runBin("delete", "--schema", f.schema), 2, "needs a filter")
	wantOut(t, runBin("replay", "--status", "dead", "--schema", f.schema), "no rows match")

	// Stdin is /dev/null: no terminal, so no prompt but a refusal.
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("h", func(context.Context, []byte) error { return errors.New("no") }))
	f.set(f.start(reg), "e", "x")
	f.waitStats("the row to die", func(m map[pair]inbox.HandlerStats) bool { return m[pair{"e", "h"}].Dead == 1 })
	r = runBin("replay", "--status", "dead", "--schema", f.schema)
	wantCode(t, r, 2, "stdin is not a terminal")
	if strings.Contains(r.stderr, "[y/N]") {
		t.Fatalf("prompted with stdin on /dev/null: %v", r)
	}
	wantOut(t, runBin("replay", "--status", "dead", "--schema", f.schema, "--yes", "--actor", "bin"), "replayed 1 row")

	// serve listens, answers, and stops on SIGINT.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--addr", "127.0.0.1:0", "--schema", f.schema)
	cmd.Env = env
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var addr string
	err := testenv.Poll(20*time.Second, func() (bool, error) {
		select {
		case waitErr := <-exited:
			return false, fmt.Errorf("serve ended before listening: %v", waitErr)
		default:
		}
		_, rest, ok := strings.Cut(stderr.String(), "dashboard on http://")
		addr, _, _ = strings.Cut(rest, " ")
		return ok && addr != "", nil
	})
	if err != nil {
		t.Fatalf("waiting for serve: %v; stderr %s", err, stderr.String())
	}
	if code, err := httpGet(ctx, "http://"+addr+"/"); err != nil || code != 200 {
		t.Errorf("GET /: %d, %v", code, err)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve after SIGINT: %v; stderr %s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop on SIGINT")
	}
}

// httpGet returns the status code of a GET of url.
func httpGet(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
