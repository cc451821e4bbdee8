package inbox

import "time"

// retryDelay is the pause before the attempt after attempt n (n >= 1)
// failed: d/2 + u·d/2 with d = min(max, base·2^(n-1)) and u in [0, 1).
func retryDelay(n int, base, max time.Duration, u float64) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max || d <= 0 {
		d = max
	}
	return d/2 + time.Duration(u*float64(d/2))
}

// pollDelay is the pause of an idle worker before its next poll:
// rate + u·seed·rate/10 with u in [0, 1).
func pollDelay(rate time.Duration, seed int, u float64) time.Duration {
	return rate + time.Duration(u*float64(seed)*float64(rate)/10)
}
