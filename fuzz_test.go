package inbox

// Fuzz targets for the pure parts of the package: backoff and poll delays,
// record and name validation, and option checking. Each seed corpus runs
// as an ordinary test under go test; fuzz one target with, for example,
//
//	go test -run '^$' -fuzz=FuzzRetryDelay -fuzztime=20s .

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
)

// unitFloat maps 64 random bits to [0, 1) the way math/rand/v2's Float64
// does, so the fuzzers explore exactly the values the worker can draw.
func unitFloat(bits uint64) float64 {
	return float64(bits<<11>>11) / (1 << 53)
}

// maxUnitBits gives the largest value unitFloat returns, 1 - 2^-53.
const maxUnitBits = 1<<53 - 1

// retryDelayBounds returns d = min(max, base·2^(n-1)) computed without
// overflow.
func retryDelayBounds(n int, base, max time.Duration) time.Duration {
	if n-1 >= 63 {
		return max // base >= 1, so base·2^62 already exceeds any int64
	}
	d := new(big.Int).Lsh(big.NewInt(int64(base)), uint(n-1))
	if d.Cmp(big.NewInt(int64(max))) >= 0 {
		return max
	}
	return time.Duration(d.Int64())
}

// returns runs fn and fails the test if it has not returned within a
// second: a pure function that loops for long is a bug (the goroutine is
// left spinning; the test fails anyway).
func returns(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatalf("%s has not returned after 1s", what)
	}
}

func FuzzRetryDelay(f *testing.F) {
	const maxDur = time.Duration(math.MaxInt64)
	for _, s := range []struct {
		n         int
		base, max time.Duration
		bits      uint64
	}{
		{1, time.Second, 10 * time.Minute, 0},
		{1, time.Second, 10 * time.Minute, maxUnitBits},
		{2, time.Second, 10 * time.Minute, 1 << 52},
		{5, DefaultRetryBackoff, DefaultMaxRetryBackoff, 12345},
		{64, time.Second, 10 * time.Minute, maxUnitBits},
		{math.MaxInt, time.Second, 10 * time.Minute, maxUnitBits},
		{1, 1, 1, maxUnitBits},
		{3, 1, 3, maxUnitBits},
		{62, 3, maxDur, maxUnitBits}, // doubling crosses max only past int64
		{63, 3, maxDur, maxUnitBits},
		{math.MaxInt, maxDur, maxDur, maxUnitBits},
		{math.MaxInt, maxDur / 2, maxDur, maxUnitBits},
		{2, maxDur/2 + 1, maxDur, maxUnitBits}, // base·2 overflows
		{40, 100 * time.Millisecond, 5 * time.Second, maxUnitBits},
		{2, 1 << 61, 1<<62 + 2, maxUnitBits},
	} {
		f.Add(s.n, int64(s.base), int64(s.max), s.bits)
	}
	f.Fuzz(func(t *testing.T, n int, base64, max64 int64, bits uint64) {
		base, max := time.Duration(base64), time.Duration(max64)
		// The domain WithRetryBackoff accepts and the worker uses.
		if n < 1 || base <= 0 || max < base {
			return
		}
		u := unitFloat(bits)
		var got time.Duration
		returns(t, fmt.Sprintf("retryDelay(%d, %d, %d, %v)", n, base, max, u), func() {
			got = retryDelay(n, base, max, u)
		})
		d := retryDelayBounds(n, base, max)
		if got < 0 {
			t.Fatalf("retryDelay(%d, %d, %d, %v) = %d, negative", n, base, max, u, got)
		}
		if got > max {
			t.Fatalf("retryDelay(%d, %d, %d, %v) = %d, above max", n, base, max, u, got)
		}
		if got < base/2 {
			t.Fatalf("retryDelay(%d, %d, %d, %v) = %d, below base/2", n, base, max, u, got)
		}
		if got < d/2 || (got >= d && d > 0) {
			t.Fatalf("retryDelay(%d, %d, %d, %v) = %d, want within [%d, %d) for d = min(max, base·2^(n-1)) = %d",
				n, base, max, u, got, d/2, d, d)
		}
		if u == 0 && got != d/2 {
			t.Fatalf("retryDelay(%d, %d, %d, 0) = %d, want exactly d/2 = %d", n, base, max, got, d/2)
		}
		// Monotone in n for a fixed u: a later attempt never waits less.
		for _, m := range []int{n + 1, n + 2, n + 64, 2 * n} {
			if m <= n {
				continue // overflow of n + k
			}
			var later time.Duration
			returns(t, fmt.Sprintf("retryDelay(%d, %d, %d, %v)", m, base, max, u), func() {
				later = retryDelay(m, base, max, u)
			})
			if later < got {
				t.Fatalf("retryDelay(%d, ...) = %d < retryDelay(%d, ...) = %d (base %d, max %d, u %v)",
					m, later, n, got, base, max, u)
			}
		}
	})
}

func FuzzPollDelay(f *testing.F) {
	for _, s := range []struct {
		rate time.Duration
		seed int
		bits uint64
	}{
		{DefaultIterationRate, DefaultIterationSeed, 0},
		{DefaultIterationRate, DefaultIterationSeed, maxUnitBits},
		{time.Hour, 0, maxUnitBits},
		{1, 100, maxUnitBits},
		{1, 0, 0},
		{20 * time.Millisecond, 2, 1 << 52},
		{time.Duration(math.MaxInt64), 0, maxUnitBits},
		{time.Duration(math.MaxInt64 / 11), 100, maxUnitBits},
		{time.Duration(math.MaxInt64 / 10), 100, maxUnitBits},
		// Rates that float64 cannot represent: computing rate + jitter in
		// float64 rounds the rate itself, up or down.
		{1<<53 + 1, 0, maxUnitBits},
		{math.MaxInt64 - 75, 0, maxUnitBits},
		{1<<60 + 1, 1, 0},
		// WithIterationRate(math.MaxInt64), "poll practically never", with
		// the default seed: rate + jitter overflows. See the report.
		{time.Duration(math.MaxInt64), DefaultIterationSeed, maxUnitBits},
	} {
		f.Add(int64(s.rate), s.seed, s.bits)
	}
	f.Fuzz(func(t *testing.T, rate64 int64, seed int, bits uint64) {
		rate := time.Duration(rate64)
		// The domain WithIterationRate and WithIterationSeed accept.
		if rate <= 0 || seed < 0 || seed > 100 {
			return
		}
		u := unitFloat(bits)
		got := pollDelay(rate, seed, u)
		if got < rate {
			t.Fatalf("pollDelay(%d, %d, %v) = %d, below the rate", rate, seed, u, got)
		}
		// got < rate + seed·rate/10 + 1, in exact arithmetic, give or take
		// the rounding of the three float64 operations computing the jitter:
		// a relative 2^-50 of the jitter bound (a few hundred ns at most).
		jitter := new(big.Rat).SetInt64(int64(seed))
		jitter.Mul(jitter, new(big.Rat).SetInt64(rate64))
		jitter.Quo(jitter, big.NewRat(10, 1))
		slack := new(big.Rat).Mul(jitter, big.NewRat(1, 1<<50))
		hi := new(big.Rat).SetInt64(rate64)
		hi.Add(hi, jitter).Add(hi, big.NewRat(1, 1)).Add(hi, slack)
		if new(big.Rat).SetInt64(int64(got)).Cmp(hi) >= 0 {
			t.Fatalf("pollDelay(%d, %d, %v) = %d, want below rate + seed·rate/10 + 1 = %s",
				rate, seed, u, got, new(big.Rat).Sub(hi, slack).FloatString(1))
		}
		if (seed == 0 || u == 0) && got != rate {
			t.Fatalf("pollDelay(%d, %d, %v) = %d, want exactly the rate", rate, seed, u, got)
		}
	})
}

// nameOK is the documented rule for event types and handler keys, written
// independently of validateName: not blank, at most 255 bytes, valid UTF-8
// without NUL.
func nameOK(s string) bool {
	blank := true
	for _, r := range s {
		if !unicode.IsSpace(r) {
			blank = false
			break
		}
	}
	return !blank && len(s) <= 255 && utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

func FuzzNewRecord(f *testing.F) {
	id := uuid.MustParse("3f1c2b8e-6a4d-4f0e-9b7a-2d5c8e1f0a93")
	for _, s := range []struct {
		id        []byte
		eventType string
		payload   []byte
		dateMode  uint8
		nanos     int64
	}{
		{id[:], "order_created", []byte(`{"id":1}`), 0, 0},
		{id[:], "order_created", nil, 1, 1_700_000_000_000_000_000},
		{id[:], "order_created", nil, 2, 0},
		{id[:], "order_created", nil, 3, 1},
		{make([]byte, 16), "order_created", nil, 0, 0},
		{nil, "order_created", nil, 0, 0},
		{id[:], "", nil, 0, 0},
		{id[:], " \t\r\n\v\f", nil, 0, 0},
		{id[:], "\u00a0\u2003\u3000", nil, 0, 0},
		{id[:], "\u0085", nil, 0, 0},
		{id[:], " x ", nil, 0, 0},
		{id[:], strings.Repeat("a", 255), nil, 0, 0},
		{id[:], strings.Repeat("a", 256), nil, 0, 0},
		{id[:], strings.Repeat("é", 127) + "a", nil, 0, 0},
		{id[:], strings.Repeat("é", 128), nil, 0, 0},
		{id[:], "\xff", nil, 0, 0},
		{id[:], "ok\xc3", nil, 0, 0},
		{id[:], "a\x00b", nil, 0, 0},
		{id[:], "\ufffd", nil, 0, 0},
		{id[:], "'; DROP TABLE inbox_records; --", []byte{0, 0xff}, 0, 0},
		{id[:], "\U0010FFFF", nil, 1, math.MinInt64},
		{id[:], "\xed\xa0\x80", nil, 0, 0}, // a UTF-16 surrogate encoded as UTF-8
	} {
		f.Add(s.id, s.eventType, s.payload, s.dateMode, s.nanos)
	}
	f.Fuzz(func(t *testing.T, idBytes []byte, eventType string, payload []byte, dateMode uint8, nanos int64) {
		var id uuid.UUID
		copy(id[:], idBytes)
		date := time.Unix(0, nanos)
		var dates []time.Time
		dateOK := true
		switch dateMode % 4 {
		case 1:
			dates = []time.Time{date}
		case 2:
			dates, dateOK = []time.Time{{}}, false
		case 3:
			dates, dateOK = []time.Time{date, date}, false
		}
		before := time.Now()
		r, err := NewRecord(id, eventType, payload, dates...)
		after := time.Now()
		valid := id != uuid.Nil && nameOK(eventType) && dateOK

		if nerr := validateName("handler key", eventType); (nerr == nil) != nameOK(eventType) {
			t.Fatalf("validateName(%q) = %v, want ok=%v", eventType, nerr, nameOK(eventType))
		} else if nerr != nil && !strings.HasPrefix(nerr.Error(), "handler key") {
			t.Fatalf("validateName(%q) = %q, want the message to start with what it checked", eventType, nerr)
		}

		if !valid {
			if err == nil || r != nil {
				t.Fatalf("NewRecord(%s, %q, %d dates) = %v, %v; want an error", id, eventType, len(dates), r, err)
			}
			if !errors.Is(err, ErrInvalidRecord) {
				t.Fatalf("NewRecord(%s, %q) error %v does not wrap ErrInvalidRecord", id, eventType, err)
			}
			// The message names one of the things wrong with the input.
			var wrong []string
			if id == uuid.Nil {
				wrong = append(wrong, "nil UUID")
			}
			if !nameOK(eventType) {
				wrong = append(wrong, "event type")
			}
			if !dateOK {
				wrong = append(wrong, "event date")
			}
			for _, w := range wrong {
				if strings.Contains(err.Error(), w) {
					return
				}
			}
			t.Fatalf("NewRecord(%s, %q, %d dates) error %q mentions none of %q", id, eventType, len(dates), err, wrong)
		}
		if err != nil {
			t.Fatalf("NewRecord(%s, %q, %d dates) = %v, want a record", id, eventType, len(dates), err)
		}
		if r.ID() != id || r.EventType() != eventType || !bytes.Equal(r.Payload(), payload) ||
			(payload == nil) != (r.Payload() == nil) {
			t.Fatalf("record returns (%s, %q, %q), want (%s, %q, %q)",
				r.ID(), r.EventType(), r.Payload(), id, eventType, payload)
		}
		switch {
		case len(dates) == 1 && !r.EventDate().Equal(date):
			t.Fatalf("EventDate = %v, want %v", r.EventDate(), date)
		case len(dates) == 0 && (r.EventDate().Before(before) || r.EventDate().After(after)):
			t.Fatalf("default EventDate = %v, want between %v and %v", r.EventDate(), before, after)
		}
		if err := r.validate(); err != nil {
			t.Fatalf("a record NewRecord returned fails validate: %v", err)
		}
	})
}

// optionCheck is one option with its documented rule and the config field
// it sets.
type optionCheck struct {
	name  string
	opt   Option
	valid bool
	holds func(c *config) bool
}

func FuzzOptions(f *testing.F) {
	sec := int64(time.Second)
	type seed struct {
		rate, timeout, erase, lease, base, max int64
		iterSeed, attempts, days, conc, batch  int
		unknown, nils, nilAt                   uint8
	}
	for _, s := range []seed{
		{sec, sec, sec, sec, sec, sec, 0, 1, 1, 1, 1, 0, 0, 255},
		{0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 2, 7, 0},
		{-1, -1, -1, int64(300*time.Millisecond) - 1, -1, -2, 101, -1, -1, -1, 10001, 255, 1, 3},
		{1, 1, 1, int64(300 * time.Millisecond), 1, 1, 100, 1, 1, 1, 10000, 1, 0, 12},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64,
			math.MaxInt, math.MaxInt, math.MaxInt, math.MaxInt, math.MaxInt, 0, 0, 255},
		{math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64,
			math.MinInt, math.MinInt, math.MinInt, math.MinInt, math.MinInt, 0, 2, 6},
		{sec, sec, sec, sec, 2 * sec, sec, 2, 5, 60, 100, 200, 1, 4, 5},
	} {
		f.Add(s.rate, s.timeout, s.erase, s.lease, s.base, s.max, s.iterSeed, s.attempts, s.days,
			s.conc, s.batch, s.unknown, s.nils, s.nilAt)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, rate64, timeout64, erase64, lease64, base64, max64 int64,
		iterSeed, attempts, days, conc, batch int, unknown, nils, nilAt uint8) {
		rate, timeout, erase := time.Duration(rate64), time.Duration(timeout64), time.Duration(erase64)
		lease, base, max := time.Duration(lease64), time.Duration(base64), time.Duration(max64)
		policy := UnknownEventTypes(int(unknown) - 1) // -1 .. 254
		var onDead DeadCallback = func(context.Context, DeadRecord) {}
		var onError ErrorCallback = func(error) {}
		lg := logger
		if nils&1 != 0 {
			onDead = nil
		}
		if nils&2 != 0 {
			onError = nil
		}
		if nils&4 != 0 {
			lg = nil
		}
		checks := []optionCheck{
			{"WithIterationRate", WithIterationRate(rate), rate > 0,
				func(c *config) bool { return c.iterationRate == rate }},
			{"WithIterationSeed", WithIterationSeed(iterSeed), iterSeed >= 0 && iterSeed <= 100,
				func(c *config) bool { return c.iterationSeed == iterSeed }},
			{"WithHandlerTimeout", WithHandlerTimeout(timeout), timeout > 0,
				func(c *config) bool { return c.handlerTimeout == timeout }},
			{"WithMaxRetryAttempt", WithMaxRetryAttempt(attempts), attempts >= 1,
				func(c *config) bool { return c.maxAttempts == min(attempts, MaxAttempts) }},
			{"WithRetention", WithRetention(erase, days), erase > 0 && days >= 1,
				func(c *config) bool { return c.eraseInterval == erase && c.retentionDays == days }},
			{"OnDeadCallback", OnDeadCallback(onDead), onDead != nil,
				func(c *config) bool { return c.onDead != nil }},
			{"OnErrorCallback", OnErrorCallback(onError), onError != nil,
				func(c *config) bool { return c.onError != nil }},
			{"WithConcurrency", WithConcurrency(conc), conc >= 1 && conc <= 100000,
				func(c *config) bool { return c.concurrency == conc }},
			{"WithBatchSize", WithBatchSize(batch), batch >= 1 && batch <= 10000,
				func(c *config) bool { return c.batchSize == batch }},
			{"WithLogger", WithLogger(lg), lg != nil,
				func(c *config) bool { return c.logger == lg }},
			{"WithUnknownEventTypes", WithUnknownEventTypes(policy), policy == RejectUnknown || policy == SkipUnknown,
				func(c *config) bool { return c.unknown == policy }},
			{"WithLease", WithLease(lease), lease >= 300*time.Millisecond && lease <= 24*time.Hour,
				func(c *config) bool { return c.lease == lease }},
			{"WithRetryBackoff", WithRetryBackoff(base, max), base > 0 && max >= base,
				func(c *config) bool { return c.backoffBase == base && c.backoffMax == max }},
		}

		// checkOne holds newConfig's answer for one option to the rule.
		checkOne := func(ch optionCheck, c config, err error) {
			t.Helper()
			switch {
			case err != nil && !errors.Is(err, ErrInvalidConfig):
				t.Fatalf("%s: error %v does not wrap ErrInvalidConfig", ch.name, err)
			case err != nil && !strings.Contains(err.Error(), ch.name+"("):
				t.Fatalf("%s: error %q does not name the option", ch.name, err)
			case err != nil && ch.valid && !strings.Contains(err.Error(), "at most"):
				// A value the documented rule allows may only be refused
				// for an upper bound, with a message saying so.
				t.Fatalf("%s: a valid value was refused: %v", ch.name, err)
			case err == nil && !ch.valid:
				t.Fatalf("%s: an invalid value was accepted", ch.name)
			case err == nil && !ch.holds(&c):
				t.Fatalf("%s: accepted, but the config does not hold the value: %+v", ch.name, c)
			}
		}
		for _, ch := range checks {
			c, err := newConfig([]Option{ch.opt})
			checkOne(ch, c, err)
		}

		// All options at once, with a nil option somewhere if nilAt says so:
		// the first failing option is reported; with none, every field holds.
		opts := make([]Option, 0, len(checks)+1)
		for _, ch := range checks {
			opts = append(opts, ch.opt)
		}
		nilIndex := -1
		if int(nilAt) <= len(opts) {
			nilIndex = int(nilAt)
			opts = append(opts[:nilIndex], append([]Option{nil}, opts[nilIndex:]...)...)
		}
		c, err := newConfig(opts)
		var want string
		for i, opt := range opts {
			if opt == nil {
				want = "is nil"
				break
			}
			k := i
			if nilIndex >= 0 && i > nilIndex {
				k--
			}
			if _, e := newConfig([]Option{opt}); e != nil {
				want = checks[k].name + "("
				break
			}
		}
		switch {
		case want == "" && err != nil:
			t.Fatalf("all options valid, newConfig = %v", err)
		case want == "":
			for _, ch := range checks {
				if !ch.holds(&c) {
					t.Fatalf("%s: not held when given with all the others: %+v", ch.name, c)
				}
			}
		case !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), want):
			t.Fatalf("newConfig with a bad option = %v, want ErrInvalidConfig mentioning %q", err, want)
		}
	})
}

// FuzzBoundText: whatever a handler's error says, what is stored is valid
// UTF-8 without NUL bytes, at most MaxErrorLength bytes, unchanged when it
// was storable already, and otherwise keeps the text's start and end.
func FuzzBoundText(f *testing.F) {
	f.Add("plain error", 0)
	f.Add("nul\x00byte", 0)
	f.Add("bad \xff utf8", 0)
	f.Add("é", MaxErrorLength)
	f.Add("\xff", MaxErrorLength*2)
	f.Add("ab\x00", 5000)
	f.Fuzz(func(t *testing.T, s string, repeat int) {
		if repeat < 0 || repeat > 4*MaxErrorLength {
			return
		}
		if repeat > 0 {
			s = strings.Repeat(s, repeat)
		}
		var got string
		returns(t, "boundText", func() { got = boundText(s) })
		switch {
		case len(got) > MaxErrorLength:
			t.Fatalf("%d bytes, want at most %d", len(got), MaxErrorLength)
		case !utf8.ValidString(got):
			t.Fatalf("not valid UTF-8: %q", got)
		case strings.IndexByte(got, 0) >= 0:
			t.Fatalf("contains a NUL byte: %q", got)
		}
		storable := len(s) <= MaxErrorLength && utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
		if storable && got != s {
			t.Fatalf("a storable text was changed: %q -> %q", s, got)
		}
		if len(s) > MaxErrorLength && utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
			if !strings.HasPrefix(s, got[:strings.Index(got, " … [")]) || !strings.HasSuffix(s, got[strings.LastIndex(got, "] … ")+len("] … "):]) {
				t.Fatalf("a long text lost its start or end")
			}
		}
	})
}
