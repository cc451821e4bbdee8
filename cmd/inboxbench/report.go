package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// table is the output of one workload: a row per figure.
type table struct {
	title string
	rows  [][]string
	notes []string
}

func newTable(format string, args ...any) *table {
	return &table{title: fmt.Sprintf(format, args...)}
}

// add appends a row: metric, library, floor, library/floor, target, result.
func (t *table) add(metric, lib, floor, ratio, target, result string) {
	t.rows = append(t.rows, []string{metric, lib, floor, ratio, target, result})
}

func (t *table) note(format string, args ...any) {
	t.notes = append(t.notes, fmt.Sprintf(format, args...))
}

func (b *bench) print(t *table) {
	b.printf("\n== %s ==\n", t.title)
	tw := tabwriter.NewWriter(b.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tlibrary\tfloor\tlib/floor\ttarget\tresult")
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
	for _, n := range t.notes {
		b.printf("  note: %s\n", n)
	}
}

// summaryLine is one target's outcome.
type summaryLine struct {
	workload, target, figure, result string
}

// check records a target's outcome for the summary and returns PASS or
// MISS. Targets are printed, not asserted: a MISS does not fail the run.
func (b *bench) check(workload, target, figure string, ok bool) string {
	res := "PASS"
	if !ok {
		res = "MISS"
	}
	b.summary = append(b.summary, summaryLine{workload, target, figure, res})
	return res
}

func (b *bench) printSummary(took time.Duration, each string) {
	b.printf("\n== summary (targets are reported, not asserted) ==\n")
	tw := tabwriter.NewWriter(b.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\ttarget\tfigure\tresult")
	for _, s := range b.summary {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.workload, s.target, s.figure, s.result)
	}
	_ = tw.Flush()
	b.printf("total run time %s (%s); load average at the end: %s\n", took.Round(100*time.Millisecond), each, loadAvg())
}

func numCPU() int { return runtime.NumCPU() }

// rate formats events per second with thousands separators.
func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return math.Inf(1)
	}
	return float64(n) / d.Seconds()
}

func fmtRate(r float64) string { return group(int64(math.Round(r))) + "/s" }

// group formats n with thousands separators.
func group(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// fmtRatio formats a ratio; a negative one (a latency below zero) has no
// meaning and prints as n/a.
func fmtRatio(x float64) string {
	if math.IsInf(x, 0) || math.IsNaN(x) || x < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", x)
}

// fmtMs formats a duration in milliseconds.
func fmtMs(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

func fmtMiB(bytes int64) string {
	if bytes <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MiB", float64(bytes)/(1<<20))
}

func fmtSecs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// spread is one figure measured in several repetitions: its median and
// its range. Ratios between figures are taken between medians.
type spread struct {
	n           int
	med, lo, hi float64
}

// spreadOf returns the median of xs (the mean of the middle two for an
// even count) and their minimum and maximum. NaNs, which stand for a
// figure a repetition could not measure, are left out.
func spreadOf(xs []float64) spread {
	s := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) {
			s = append(s, x)
		}
	}
	if len(s) == 0 {
		return spread{med: math.NaN(), lo: math.NaN(), hi: math.NaN()}
	}
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{n: len(s), med: m, lo: s[0], hi: s[len(s)-1]}
}

// spreadBy returns the spread of f over runs.
func spreadBy[T any](runs []T, f func(T) float64) spread {
	xs := make([]float64, len(runs))
	for i, r := range runs {
		xs[i] = f(r)
	}
	return spreadOf(xs)
}

// format renders the spread as "median unit (min–max)", each number
// formatted by num; a single measurement shows alone.
func (s spread) format(num func(float64) string, unit string) string {
	switch {
	case s.n == 0:
		return "n/a"
	case s.n == 1:
		return num(s.med) + unit
	}
	return num(s.med) + unit + " (" + num(s.lo) + "–" + num(s.hi) + ")"
}

// over returns the ratio of two medians.
func (s spread) over(t spread) float64 { return s.med / t.med }

func groupF(x float64) string { return group(int64(math.Round(x))) }

// rateCell formats a spread of rates in events per second.
func rateCell(s spread) string { return s.format(groupF, "/s") }

// msCell formats a spread of milliseconds.
func msCell(s spread) string {
	return s.format(func(x float64) string { return fmt.Sprintf("%.3f", x) }, " ms")
}

// usCell formats a spread of microseconds.
func usCell(s spread) string {
	return s.format(func(x float64) string { return fmt.Sprintf("%.1f", x) }, " µs")
}

// secsCell formats a spread of seconds.
func secsCell(s spread) string {
	return s.format(func(x float64) string { return fmt.Sprintf("%.2f", x) }, " s")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// latencies summarises a sample of durations.
type latencies struct {
	n                  int
	p50, p99, max, min time.Duration
	mean               time.Duration
}

// summarise returns nearest-rank percentiles of ds.
func summarise(ds []time.Duration) latencies {
	if len(ds) == 0 {
		return latencies{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	pct := func(q float64) time.Duration {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return latencies{n: len(s), p50: pct(0.50), p99: pct(0.99), max: s[len(s)-1], min: s[0],
		mean: sum / time.Duration(len(s))}
}

// loadAvg returns the 1, 5 and 15 minute load averages of the machine.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
