package testenv

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Child is this test binary run again as a child process, told by an
// environment variable to be something else (a consumer to kill, say).
// Its output is kept for [Child.WaitLine] and for failure messages.
type Child struct {
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{} // closed once the child has exited
	err    error         // what Wait returned; read after exited is closed
}

// StartChild runs os.Args[0] with env set to the JSON encoding of spec
// (read it back in TestMain with [ChildSpec]). The child is killed when t
// ends if it still runs.
func StartChild(t testing.TB, env string, spec any) *Child {
	t.Helper()
	data, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	c := &Child{cmd: exec.Command(os.Args[0]), out: &lockedBuffer{}, exited: make(chan struct{})}
	c.cmd.Env = append(os.Environ(), env+"="+string(data))
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	go func() { c.err = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill() // fails only if it has exited
		<-c.exited
	})
	return c
}

// ChildSpec decodes into spec the value [StartChild] gave env, and reports
// whether this process is such a child. Call it first in TestMain.
func ChildSpec(env string, spec any) (bool, error) {
	v, ok := os.LookupEnv(env)
	if !ok {
		return false, nil
	}
	return true, json.Unmarshal([]byte(v), spec)
}

// WaitLine waits until the child has printed line (a whole line), and
// fails t if it exits first or within passes.
func (c *Child) WaitLine(t testing.TB, within time.Duration, line string) {
	t.Helper()
	err := Poll(within, func() (bool, error) {
		if c.hasLine(line) {
			return true, nil
		}
		select {
		case <-c.exited:
			return false, fmt.Errorf("child exited: %v", c.err)
		default:
			return false, nil
		}
	})
	if err != nil {
		t.Fatalf("waiting for the child to print %q: %v\nits output:\n%s", line, err, c.out)
	}
}

// hasLine reports whether the child has printed line.
func (c *Child) hasLine(line string) bool {
	for _, l := range strings.Split(c.out.String(), "\n") {
		if l == line {
			return true
		}
	}
	return false
}

// Kill sends the child SIGKILL and fails t unless that is what ended it.
func (c *Child) Kill(t testing.TB) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill the child: %v\nits output:\n%s", err, c.out)
	}
	<-c.exited
	if c.err == nil || !strings.Contains(c.err.Error(), "killed") {
		t.Fatalf("child ended with %v, want killed\nits output:\n%s", c.err, c.out)
	}
}

// lockedBuffer is an output buffer written by a child's pipe copier and
// read by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
