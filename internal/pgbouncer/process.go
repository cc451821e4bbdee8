package pgbouncer

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// process is a child process that the kernel kills if this process dies
// first, and that one goroutine owns: it starts the child, waits for it
// and then reports its exit by closing done.
type process struct {
	proc *os.Process
	done chan struct{} // closed once the child has exited and been reaped
	err  error         // what Wait returned; read it only after done is closed
}

// startProcess starts cmd with Pdeathsig set to SIGKILL, so that the child
// does not outlive this process, however this process ends.
//
// The kernel sends the parent-death signal when the thread that created
// the child exits, not when the process does (https://go.dev/issue/27505).
// The Go runtime ends a thread when the goroutine locked to it exits, and
// an unlocked goroutine may move off the thread it started the child from,
// which another goroutine may then lock and end. So the child is started
// from a goroutine locked to its thread until the child has been reaped:
// that thread lives as long as the child. (A change of credentials clears
// the setting, but the child makes it after switching to
// cmd.SysProcAttr.Credential.)
func startProcess(cmd *exec.Cmd) (*process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL

	p := &process{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		defer close(p.done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread() // the child is dead by then
		if err := cmd.Start(); err != nil {
			p.err = err
			started <- err
			return
		}
		p.proc = cmd.Process
		started <- nil
		p.err = cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// pid returns the child's process id.
func (p *process) pid() int { return p.proc.Pid }

// exited reports whether the child has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends the child SIGTERM, and SIGKILL if it has not exited after
// timeout, and returns once it has exited. It returns an error if the
// child had already exited on its own.
func (p *process) stop(timeout time.Duration) error {
	if p.exited() {
		return fmt.Errorf("exited before it was stopped: %v", p.err)
	}
	_ = p.proc.Signal(syscall.SIGTERM) // fails only if the child exited meanwhile
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.proc.Kill() // fails only if the child exited meanwhile
		<-p.done
	}
	return nil
}
