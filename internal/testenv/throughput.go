package testenv

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// CompareThroughput measures a subject beside its floor in the same run:
// it runs each reps times, in turns whose order alternates, each moving n
// messages and returning how long that took, and reports the medians as
// the benchmark's metrics "msgs/s" (the subject), "floor-msgs/s" and
// "ratio" (subject over floor), with every turn in the log. Run it with
// -benchtime Nx (N messages per turn).
func CompareThroughput(b *testing.B, reps, n int, floor, subject func(b *testing.B, n int) time.Duration) {
	b.Helper()
	var fs, ss []float64
	var log strings.Builder
	for i := range reps {
		first, second := floor, subject
		if i%2 == 1 {
			first, second = subject, floor
		}
		d1, d2 := first(b, n), second(b, n)
		if i%2 == 1 {
			d1, d2 = d2, d1
		}
		f, s := float64(n)/d1.Seconds(), float64(n)/d2.Seconds()
		fs, ss = append(fs, f), append(ss, s)
		fmt.Fprintf(&log, "\n  turn %d: floor %8.0f msgs/s, inbox %8.0f msgs/s, ratio %.2f", i+1, f, s, s/f)
	}
	f, s := median(fs), median(ss)
	b.ReportMetric(s, "msgs/s")
	b.ReportMetric(f, "floor-msgs/s")
	b.ReportMetric(s/f, "ratio")
	if n > 1 { // not the testing package's first run, of one iteration
		b.Logf("%d messages per turn, %d turns (medians: floor %.0f msgs/s, inbox %.0f msgs/s, ratio %.2f):%s",
			n, reps, f, s, s/f, log.String())
	}
}

// MedianOf returns the median of xs (the mean of the middle two when
// even).
func MedianOf(xs []float64) float64 { return median(xs) }

// median returns the median of xs (the mean of the middle two when even).
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
