package main

import (
	"os"
	"os/exec"
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
	// A child that spins for about 300 ms of CPU, then exits and is reaped.
	cmd := exec.Command("sh", "-c", `end=$(( $(date +%s%N) + 300000000 )); while [ $(date +%s%N) -lt $end ]; do :; done`)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	z, err := srv.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	got := cpuBetween(a, z)
	// The spinning shell forks date, whose time is reaped by the shell and
	// so counted too; allow for a loaded machine.
	if got < 100*time.Millisecond || got > 2*time.Second {
		t.Fatalf("cpuBetween = %v for a child that spun for about 300ms", got)
	}
	t.Logf("cpuBetween = %v", got)
}

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
