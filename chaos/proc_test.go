package chaos_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// proc is a child process: the test binary re-run in a child role.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // the file holding its stdout and stderr

	done   chan struct{} // closed when it has exited
	err    error         // its exit status, once done is closed
	killed atomic.Bool   // the test killed it
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to exit.
func (p *proc) kill() {
	p.killed.Store(true)
	_ = p.cmd.Process.Signal(syscall.SIGKILL) // fails only if it has exited already
	<-p.done
}

// wait waits up to d for the process to exit and returns its exit status.
func (p *proc) wait(d time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		return fmt.Errorf("%s did not exit within %v", p.name, d)
	}
}

// procs starts child processes and makes sure none outlives the test.
type procs struct {
	dir string
	mu  sync.Mutex
	all []*proc
}

func newProcs(t *testing.T, dir string) *procs {
	ps := &procs{dir: dir}
	t.Cleanup(ps.killAll)
	return ps
}

// start starts a child process with cfg. Its output goes to dir/NAME.log.
func (ps *procs) start(cfg childConfig) (*proc, error) {
	spec, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(ps.dir, cfg.Name+".log")
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()                 // the child has its own descriptor
	cmd := exec.Command(os.Args[0]) // TestMain sees roleEnv and runs the role
	cmd.Env = append(os.Environ(), roleEnv+"="+string(spec))
	cmd.Stdout, cmd.Stderr = f, f
	// Should this process die without cleaning up, its children die too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Name, err)
	}
	p := &proc{name: cfg.Name, cmd: cmd, log: path, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	ps.mu.Lock()
	ps.all = append(ps.all, p)
	ps.mu.Unlock()
	return p, nil
}

// killAll kills every child still running and waits for them.
func (ps *procs) killAll() {
	ps.mu.Lock()
	all := append([]*proc(nil), ps.all...)
	ps.mu.Unlock()
	for _, p := range all {
		if !p.exited() {
			p.kill()
		}
	}
}

// countInLogs counts the lines containing s in every child's log.
func (ps *procs) countInLogs(s string) int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	n := 0
	for _, p := range ps.all {
		b, err := os.ReadFile(p.log)
		if err == nil {
			n += strings.Count(string(b), s)
		}
	}
	return n
}

// alarms are what a child's log must never contain.
var alarms = []string{"WARNING: DATA RACE", "panic:", "chaos child failed", "fatal error:", "deadlock detected"}

// alarming returns the children whose logs contain an alarm.
func (ps *procs) alarming() []string {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var out []string
	for _, p := range ps.all {
		b, err := os.ReadFile(p.log)
		if err != nil {
			continue
		}
		for _, a := range alarms {
			if strings.Contains(string(b), a) {
				out = append(out, fmt.Sprintf("%s: %q in %s", p.name, a, p.log))
			}
		}
	}
	return out
}

// tails returns the end of every child's log, for a failure report: the
// last n lines of the logs of children that failed (exited on their own
// with an error, or logged an alarm), and the last 3 lines of the others.
func (ps *procs) tails(n int) string {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var failed, rest strings.Builder
	for _, p := range ps.all {
		b, err := os.ReadFile(p.log)
		if err != nil {
			continue
		}
		status := "running"
		if p.exited() {
			status = fmt.Sprintf("exited: %v", p.err)
		}
		bad := p.exited() && p.err != nil && !p.killed.Load()
		for _, a := range alarms {
			bad = bad || strings.Contains(string(b), a)
		}
		out, lines := &rest, 3
		if bad {
			out, lines = &failed, n
		}
		if s := tail(string(b), lines); s != "" {
			fmt.Fprintf(out, "--- %s (%s), last lines of %s:\n%s\n", p.name, status, p.log, s)
		}
	}
	return failed.String() + rest.String()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
