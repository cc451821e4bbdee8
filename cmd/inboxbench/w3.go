package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// envWorkerURL passes the database URL to W3 worker processes (not on the
// command line, where it would show in ps).
const envWorkerURL = "INBOXBENCH_WORKER_DATABASE_URL"

// w3Result is one W3 run.
type w3Result struct {
	procs       int
	took        time.Duration
	runs        []int   // handler runs per process
	hwm         []int64 // peak RSS per process, bytes
	twice       int     // events whose handler ran more than once
	missing     int     // events whose handler never ran
	done, sumAt int64
}

// w3 runs W3: the same number of events drained by 4 worker processes and
// by 1, alternately, b.reps times each.
func (b *bench) w3(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	n := b.size.w3
	var ones, fours []w3Result
	for range b.reps {
		one, err := b.w3run(ctx, exe, 1, n)
		if err != nil {
			return fmt.Errorf("1 process: %w", err)
		}
		four, err := b.w3run(ctx, exe, 4, n)
		if err != nil {
			return fmt.Errorf("4 processes: %w", err)
		}
		ones, fours = append(ones, one), append(fours, four)
	}
	drainR := func(r w3Result) float64 { return rate(n, r.took) }
	r1, r4 := spreadBy(ones, drainR), spreadBy(fours, drainR)
	// Correctness counts are summed over every repetition.
	sum := func(rs []w3Result) (twice, missing int, exact bool) {
		exact = true
		for _, r := range rs {
			twice, missing = twice+r.twice, missing+r.missing
			exact = exact && r.sumAt == int64(n) && r.done == int64(n)
		}
		return twice, missing, exact
	}
	twice4, missing4, exact4 := sum(fours)
	twice1, missing1, exact1 := sum(ones)
	last4, last1 := fours[len(fours)-1], ones[len(ones)-1]
	t := newTable("W3: %s events drained by 4 Inbox processes vs 1 (floor column: 1 process); median (min–max) of %d repetitions",
		group(int64(n)), b.reps)
	x := r4.over(r1)
	t.add("drain (events/s)", rateCell(r4), rateCell(r1), fmtRatio(x), ">= 1.00x one instance",
		b.check("W3", "4 processes >= 1.00x 1 process", fmtRatio(x), x >= 1))
	t.add("events run twice, all repetitions", fmt.Sprint(twice4), fmt.Sprint(twice1), "", "0",
		b.check("W3", "no (event, handler) ran twice", fmt.Sprintf("%d + %d", twice4, twice1), twice4 == 0 && twice1 == 0))
	t.add("events never run, all repetitions", fmt.Sprint(missing4), fmt.Sprint(missing1), "", "0",
		b.check("W3", "every event ran", fmt.Sprintf("%d + %d", missing4, missing1), missing4 == 0 && missing1 == 0))
	t.add("sum(attempts) / done rows, last run", fmt.Sprintf("%d / %d", last4.sumAt, last4.done), fmt.Sprintf("%d / %d", last1.sumAt, last1.done),
		"", fmt.Sprintf("%d / %d", n, n),
		b.check("W3", "sum(attempts) = done = events, every run", fmt.Sprintf("%d/%d, %d/%d", last4.sumAt, last4.done, last1.sumAt, last1.done),
			exact4 && exact1))
	t.add("handler runs per process, last run", ints(last4.runs), ints(last1.runs), "", "", "")
	t.add("peak RSS per worker process, last run", mibs(last4.hwm), mibs(last1.hwm), "", "", "")
	t.note("runs alternate: 1 process, 4 processes, 1, ...; each starts from a freshly loaded and vacuumed table")
	t.note("workers are this binary re-run with -worker; each runs Inbox defaults except WithoutMigrations (the schema is")
	t.note("migrated beforehand, so goose's 1 s lock polling does not land in the timed window); timed from telling the")
	t.note("started processes to Start until no row is unfinished (polled every 10 ms)")
	b.print(t)
	if twice4+twice1+missing4+missing1 > 0 || !exact4 || !exact1 {
		b.exitCode = 1
	}
	return nil
}

func ints(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = group(int64(x))
	}
	return strings.Join(s, " ")
}

func mibs(v []int64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmtMiB(x)
	}
	return strings.Join(s, ", ")
}

// w3child is a running worker process.
type w3child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	out   string
}

func (b *bench) w3run(ctx context.Context, exe string, procs, n int) (res w3Result, err error) {
	res.procs = procs
	if err := b.reset(ctx, b.lib); err != nil {
		return res, err
	}
	if _, err := b.libSet(ctx, b.lib, n); err != nil {
		return res, err
	}
	if err := b.settle(ctx, b.lib); err != nil {
		return res, err
	}
	dir, err := os.MkdirTemp("", "inboxbench-w3-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	children := make([]*w3child, procs)
	defer func() {
		for _, c := range children {
			if c != nil && c.cmd.Process != nil && c.cmd.ProcessState == nil {
				_ = c.stdin.Close()
				cancel()
				_ = c.cmd.Wait()
			}
		}
	}()
	for i := range children {
		c := &w3child{out: filepath.Join(dir, fmt.Sprintf("runs-%d", i)), lines: make(chan string, 4)}
		c.cmd = exec.CommandContext(cctx, exe, "-worker", "-worker-out", c.out)
		c.cmd.Env = append(os.Environ(), envWorkerURL+"="+b.dbURL)
		c.cmd.Stderr = os.Stderr
		if c.stdin, err = c.cmd.StdinPipe(); err != nil {
			return res, err
		}
		stdout, err := c.cmd.StdoutPipe()
		if err != nil {
			return res, err
		}
		if err := c.cmd.Start(); err != nil {
			return res, err
		}
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				c.lines <- sc.Text()
			}
			close(c.lines)
		}()
		children[i] = c
	}
	expect := func(c *w3child, prefix string, within time.Duration) (string, error) {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return "", fmt.Errorf("worker process exited before saying %q", prefix)
			}
			if !strings.HasPrefix(line, prefix) {
				return "", fmt.Errorf("worker process said %q, want %q", line, prefix)
			}
			return line, nil
		case <-time.After(within):
			return "", fmt.Errorf("worker process did not say %q within %v", prefix, within)
		}
	}
	for _, c := range children {
		if _, err := expect(c, "ready", time.Minute); err != nil {
			return res, err
		}
	}

	t0 := time.Now()
	for _, c := range children {
		if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
			return res, err
		}
	}
	if err := waitFinished(ctx, b.lib, 10*time.Millisecond, 10*time.Minute); err != nil {
		return res, err
	}
	res.took = time.Since(t0)

	seen := make([]uint8, n)
	for _, c := range children {
		_ = c.stdin.Close() // tells the worker to stop
	}
	for _, c := range children {
		line, err := expect(c, "done", time.Minute)
		if err != nil {
			return res, err
		}
		if err := c.cmd.Wait(); err != nil {
			return res, fmt.Errorf("worker process: %w", err)
		}
		var runs int
		var hwm int64
		if _, err := fmt.Sscanf(line, "done runs=%d hwm_kib=%d", &runs, &hwm); err != nil {
			return res, fmt.Errorf("worker process said %q: %w", line, err)
		}
		data, err := os.ReadFile(c.out)
		if err != nil {
			return res, err
		}
		if len(data) != 8*runs {
			return res, fmt.Errorf("worker process reported %d runs but wrote %d bytes", runs, len(data))
		}
		for i := 0; i < len(data); i += 8 {
			seq := binary.LittleEndian.Uint64(data[i:])
			if seq >= uint64(n) {
				return res, fmt.Errorf("worker process ran unknown event %d", seq)
			}
			if seen[seq] < 255 {
				seen[seq]++
			}
		}
		res.runs = append(res.runs, runs)
		res.hwm = append(res.hwm, hwm*1024)
	}
	for _, s := range seen {
		switch {
		case s == 0:
			res.missing++
		case s > 1:
			res.twice++
		}
	}
	res.done, res.sumAt, err = tally(ctx, b.lib)
	return res, err
}

// runWorker is a W3 worker process: it prepares an Inbox on the library's
// table, says "ready", starts on "go", stops at the end of its input, and
// writes the sequence numbers of the events it ran to out.
func runWorker(ctx context.Context, out string) error {
	url := os.Getenv(envWorkerURL)
	if url == "" || out == "" {
		return errors.New("-worker is internal to inboxbench's W3")
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = libSchema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return err
	}
	var mu sync.Mutex
	seqs := make([]uint64, 0, 1<<14)
	reg := inbox.NewRegistry()
	reg.On(eventType, inbox.HandlerFunc(handlerKey, func(_ context.Context, p []byte) error {
		mu.Lock()
		seqs = append(seqs, uint64(seqOf(p)))
		mu.Unlock()
		return nil
	}))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ib, err := inbox.New(pool, reg, inbox.WithLogger(log), inbox.WithoutMigrations())
	if err != nil {
		return err
	}
	in := bufio.NewScanner(os.Stdin)
	fmt.Println("ready")
	if !in.Scan() || in.Text() != "go" {
		return errors.New("expected \"go\" on stdin")
	}
	if err := ib.Start(ctx); err != nil {
		return err
	}
	for in.Scan() { // until the parent closes stdin
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := ib.Stop(sctx); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	mu.Lock()
	buf := make([]byte, 8*len(seqs))
	for i, s := range seqs {
		binary.LittleEndian.PutUint64(buf[8*i:], s)
	}
	mu.Unlock()
	if err := os.WriteFile(out, buf, 0o600); err != nil {
		return err
	}
	fmt.Printf("done runs=%d hwm_kib=%d\n", len(seqs), statusKiB("/proc/self/status", "VmHWM:"))
	return nil
}
