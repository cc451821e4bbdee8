package inbox

import (
	"math"
	"time"
)

// retryDelay is the pause before the attempt after attempt n (n >= 1)
// failed: d/2 + u·d/2 with d = min(max, base·2^(n-1)) and u in [0, 1).
func retryDelay(n int, base, max time.Duration, u float64) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		if d > max/2 { // doubling would pass max (or overflow)
			d = max
			break
		}
		d *= 2
	}
	if d > max || d <= 0 {
		d = max
	}
	return d/2 + time.Duration(u*float64(d/2))
}

// pollDelay is the pause of an idle worker before its next poll:
// rate + u·seed·rate/10 with u in [0, 1), at most the longest Duration.
// Only the jitter goes through float64: the rate is kept exact.
func pollDelay(rate time.Duration, seed int, u float64) time.Duration {
	j := u * float64(seed) * float64(rate) / 10
	if j >= float64(math.MaxInt64-rate) {
		return math.MaxInt64
	}
	return rate + time.Duration(j)
}
