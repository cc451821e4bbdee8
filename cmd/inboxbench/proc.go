package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// resetPeakRSS returns freed memory to the OS and resets this process's
// peak RSS (VmHWM) to its current RSS, so the next [peakRSS] reports the
// peak of what runs in between.
func resetPeakRSS() {
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// peakRSS returns this process's VmHWM in bytes, or 0 if unknown.
func peakRSS() int64 { return statusKiB("/proc/self/status", "VmHWM:") * 1024 }

// statusKiB reads a "Name:  123 kB" line of a /proc status file.
func statusKiB(path, field string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// userHZ is the unit of the CPU times in /proc/<pid>/stat: USER_HZ, which
// Linux fixes at 100 for user space.
const userHZ = 100

// procStat holds the fields of /proc/<pid>/stat that the benchmark uses.
type procStat struct {
	comm                         string
	ppid                         int
	utime, stime, cutime, cstime uint64 // in 1/userHZ s
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// comm is in parentheses and may contain spaces: split after the last ')'.
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	// f[0] is field 3 (state); utime is field 14.
	num := func(i int) uint64 { n, _ := strconv.ParseUint(f[i], 10, 64); return n }
	ppid, _ := strconv.Atoi(f[1])
	return procStat{comm: string(b[open+1 : end]), ppid: ppid,
		utime: num(11), stime: num(12), cutime: num(13), cstime: num(14)}, nil
}

// serverCPU measures the CPU time of every process of a local PostgreSQL
// server: the postmaster and its children, including children that start
// or exit during the window.
type serverCPU struct {
	postmaster int
}

// findServer locates the postmaster of the server behind pool through a
// backend's parent process. It fails when the server does not run on this
// machine in this PID namespace (a remote server or a container).
func findServer(ctx context.Context, pool *pgxpool.Pool) (*serverCPU, error) {
	var pid int
	var db string
	if err := pool.QueryRow(ctx, "SELECT pg_backend_pid(), current_database()").Scan(&pid, &db); err != nil {
		return nil, err
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(db)) {
		return nil, fmt.Errorf("backend %d is not a process of this machine (server remote or in a container)", pid)
	}
	st, err := readStat(pid)
	if err != nil {
		return nil, err
	}
	pm, err := readStat(st.ppid)
	if err != nil || pm.comm != "postgres" {
		return nil, fmt.Errorf("parent %d of backend %d is not a postgres process", st.ppid, pid)
	}
	return &serverCPU{postmaster: st.ppid}, nil
}

// cpuSnapshot is the CPU time of a server's processes at one moment.
type cpuSnapshot struct {
	at     time.Time
	ticks  map[int]uint64 // utime+stime of the postmaster and each child
	reaped uint64         // the postmaster's cutime+cstime: exited children
}

func (s *serverCPU) snapshot() (cpuSnapshot, error) {
	snap := cpuSnapshot{at: time.Now(), ticks: map[int]uint64{}}
	pm, err := readStat(s.postmaster)
	if err != nil {
		return snap, fmt.Errorf("postmaster %d: %w", s.postmaster, err)
	}
	snap.ticks[s.postmaster] = pm.utime + pm.stime
	snap.reaped = pm.cutime + pm.cstime
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return snap, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil || st.ppid != s.postmaster {
			continue
		}
		snap.ticks[pid] = st.utime + st.stime
	}
	return snap, nil
}

// cpuBetween returns the CPU time the server used between two snapshots.
// A child alive at both counts its difference; one that exited in between
// counts through the postmaster's reaped-children time, less what it had
// used before the window.
func cpuBetween(a, b cpuSnapshot) time.Duration {
	var ticks int64
	for _, t := range b.ticks {
		ticks += int64(t)
	}
	for _, t := range a.ticks {
		ticks -= int64(t)
	}
	ticks += int64(b.reaped) - int64(a.reaped)
	return time.Duration(ticks) * time.Second / userHZ
}

// selfCPU returns the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuUse is the CPU time spent in a window by this process and, when it
// runs on this machine, by the PostgreSQL server (pgKnown).
type cpuUse struct {
	goCPU, pgCPU time.Duration
	pgKnown      bool
}

// perEvent returns the Go, PostgreSQL and total CPU time per event in
// microseconds; the PostgreSQL and total figures are NaN when the server's
// CPU is unknown.
func (c cpuUse) perEvent(n int) (goUS, pgUS, totalUS float64) {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(n) }
	goUS, pgUS, totalUS = us(c.goCPU), math.NaN(), math.NaN()
	if c.pgKnown {
		pgUS, totalUS = us(c.pgCPU), us(c.goCPU+c.pgCPU)
	}
	return goUS, pgUS, totalUS
}

// startCPU starts measuring the CPU time of this process and, if it runs
// on this machine, of the PostgreSQL server; the returned function stops
// the measurement.
func (b *bench) startCPU(ctx context.Context) func() cpuUse {
	self0 := selfCPU()
	var srv *serverCPU
	var snap0 cpuSnapshot
	if s, err := findServer(ctx, b.lib); err == nil {
		if snap0, err = s.snapshot(); err == nil {
			srv = s
		}
	}
	return func() cpuUse {
		use := cpuUse{goCPU: selfCPU() - self0}
		if srv == nil {
			return use
		}
		snap1, err := srv.snapshot()
		if err != nil {
			return use
		}
		use.pgCPU, use.pgKnown = cpuBetween(snap0, snap1), true
		return use
	}
}
