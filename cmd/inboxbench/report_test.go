package main

import (
	"math"
	"testing"
)

func TestSpreadOf(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name        string
		xs          []float64
		n           int
		med, lo, hi float64
	}{
		{"odd", []float64{5, 1, 3}, 3, 3, 1, 5},
		{"even takes the mean of the middle two", []float64{4, 1, 2, 10}, 4, 3, 1, 10},
		{"one", []float64{7}, 1, 7, 7, 7},
		{"NaNs are left out", []float64{nan, 2, nan, 4, 9}, 3, 4, 2, 9},
		{"ties", []float64{2, 2, 2, 1, 3}, 5, 2, 1, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]float64(nil), tc.xs...)
			s := spreadOf(tc.xs)
			if s.n != tc.n || s.med != tc.med || s.lo != tc.lo || s.hi != tc.hi {
				t.Fatalf("spreadOf(%v) = %+v, want n=%d med=%v lo=%v hi=%v", tc.xs, s, tc.n, tc.med, tc.lo, tc.hi)
			}
			for i := range in { // the input is not reordered
				if !(in[i] == tc.xs[i] || math.IsNaN(in[i]) && math.IsNaN(tc.xs[i])) {
					t.Fatalf("spreadOf reordered its input: %v", tc.xs)
				}
			}
		})
	}
	for _, xs := range [][]float64{nil, {nan, nan}} {
		if s := spreadOf(xs); s.n != 0 || !math.IsNaN(s.med) || rateCell(s) != "n/a" {
			t.Fatalf("spreadOf(%v) = %+v (%s), want an empty spread", xs, s, rateCell(s))
		}
	}
}

func TestSpreadFormat(t *testing.T) {
	if got, want := rateCell(spreadOf([]float64{39_478.4, 37_100, 40_200.6})), "39,478/s (37,100–40,201)"; got != want {
		t.Fatalf("rateCell = %q, want %q", got, want)
	}
	if got, want := msCell(spreadOf([]float64{0.25})), "0.250 ms"; got != want {
		t.Fatalf("msCell = %q, want %q", got, want)
	}
	a, b := spreadOf([]float64{1, 8, 9}), spreadOf([]float64{2, 4, 100})
	if got := a.over(b); got != 2 {
		t.Fatalf("ratio of medians = %v, want 2", got)
	}
}

func TestSpreadBy(t *testing.T) {
	type run struct{ d float64 }
	s := spreadBy([]run{{3}, {1}, {2}}, func(r run) float64 { return r.d * 10 })
	if s.med != 20 || s.lo != 10 || s.hi != 30 {
		t.Fatalf("spreadBy = %+v", s)
	}
}

func TestLargest(t *testing.T) {
	for k, want := range map[int]string{1: "largest", 2: "2nd-largest", 3: "3rd-largest", 4: "4th-largest",
		11: "11th-largest", 12: "12th-largest", 21: "21st-largest", 22: "22nd-largest", 103: "103rd-largest"} {
		if got := largest(k); got != want {
			t.Errorf("largest(%d) = %q, want %q", k, got, want)
		}
	}
}
