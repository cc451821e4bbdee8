package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// The server CPU accounting counts a child that burns CPU and exits inside
// the window, through the parent's reaped-children time. This process
// stands in for the postmaster.
func TestCPUBetweenCountsExitedChildren(t *testing.T) {
	srv := &serverCPU{postmaster: os.Getpid()}
	a, err := srv.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// A child that burns 300 ms of its own CPU time, then exits and is
	// reaped: its time must show in this process's children's time.
	cmd := exec.Command(os.Args[0]) // TestMain sees spinEnv
	cmd.Env = append(os.Environ(), spinEnv+"=300ms")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("spinning child: %v\n%s", err, out)
	}
	z, err := srv.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	got := cpuBetween(a, z)
	// 10 ms ticks; the child's start-up costs a little more.
	if got < 280*time.Millisecond || got > 5*time.Second {
		t.Fatalf("cpuBetween = %v for a child that used 300ms of CPU", got)
	}
	t.Logf("cpuBetween = %v", got)
}

// spinEnv makes the test binary a child that burns the given CPU time.
const spinEnv = "INBOXBENCH_SPIN"

// TestMain runs the spinning child's role instead of the tests when
// spinEnv is set.
func TestMain(m *testing.M) {
	if v := os.Getenv(spinEnv); v != "" {
		if err := spin(v); err != nil {
			fmt.Fprintln(os.Stderr, "spin child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// spin burns the CPU time d names, then returns.
func spin(d string) error {
	want, err := time.ParseDuration(d)
	if err != nil {
		return err
	}
	for {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return err
		}
		if time.Duration(ru.Utime.Nano()+ru.Stime.Nano()) >= want {
			return nil
		}
		for i := 0; i < 1e6; i++ {
			spinSink += i
		}
	}
}

var spinSink int

func TestReadStat(t *testing.T) {
	st, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != os.Getppid() {
		t.Fatalf("ppid = %d, want %d", st.ppid, os.Getppid())
	}
}

func TestPeakRSS(t *testing.T) {
	resetPeakRSS()
	before := peakRSS()
	if before <= 0 {
		t.Fatal("VmHWM not found")
	}
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = 1
	}
	after := peakRSS()
	if after < before+48<<20 {
		t.Fatalf("peak RSS %d -> %d after touching 64 MiB", before, after)
	}
	_ = buf[len(buf)-1]
}

func TestSummarise(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 200; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	l := summarise(ds)
	if l.p50 != 100*time.Millisecond || l.p99 != 198*time.Millisecond || l.max != 200*time.Millisecond {
		t.Fatalf("summarise = %+v", l)
	}
}
