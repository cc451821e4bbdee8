package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// Retention: what a done row costs before and after retention erased its
// payload, what retention costs per row it erases or deletes, and whether
// a redelivery is still recognised once the payload is gone.

// retentionCase is one payload size of Retention.
type retentionCase struct {
	payload int // bytes per event
	events  int // events stored, one row each
}

const (
	retentionInterval  = 20 * time.Millisecond // WithRetention's interval in the timed runs
	retentionDedupDays = 60                    // WithRetention's window
	retentionErasDays  = 7                     // WithPayloadRetention
	erasedAgeDays      = 10                    // backdated age of the rows whose payloads go
	deletedAgeDays     = 70                    // backdated age of the rows that go
	redeliverSample    = 1_000                 // events redelivered after erasure
	redeliverChanged   = 10                    // of which redelivered again with another payload
	bytesTarget        = 250                   // bytes per event after erasure, compacted
	retentionDeadline  = 5 * time.Minute       // longest wait for one retention run
)

// retentionEvents are the events of one case: random ids, and payloads of
// random bytes (which no compression shrinks) drawn from a seed per event,
// so that a redelivery can send the same payload again.
type retentionEvents struct {
	size int
	ids  []uuid.UUID
	date time.Time
}

func newRetentionEvents(n, size int) *retentionEvents {
	ids := make([]uuid.UUID, n)
	for i := range ids {
		ids[i] = uuid.New()
	}
	return &retentionEvents{size: size, ids: ids, date: time.Now()}
}

// payload returns event seq's payload: the same bytes at every call.
func (e *retentionEvents) payload(seq int) []byte {
	var seed [32]byte
	binary.BigEndian.PutUint64(seed[:], uint64(seq))
	binary.BigEndian.PutUint64(seed[8:], uint64(e.size))
	p := make([]byte, e.size)
	_, _ = rand.NewChaCha8(seed).Read(p)
	return p
}

// record returns event seq with payload p.
func (e *retentionEvents) record(seq int, p []byte) *inbox.Record {
	r, err := inbox.NewRecord(e.ids[seq], eventType, p, e.date)
	if err != nil {
		panic(err) // the arguments are valid by construction
	}
	return r
}

// sample returns k event numbers spread evenly over the events.
func (e *retentionEvents) sample(k int) []int {
	n := len(e.ids)
	k = min(k, n)
	seqs := make([]int, k)
	for i := range seqs {
		seqs[i] = i * n / k
	}
	return seqs
}

// relSizes is the size of a table and what a whole row averages.
type relSizes struct {
	total, table, indexes int64   // pg_total_relation_size = pg_table_size + pg_indexes_size
	avgRow                float64 // avg(pg_column_size(t.*))
}

// retentionRun is one repetition of one case, for the library or the
// minimal floor.
type retentionRun struct {
	before, after, vacuumed, compacted relSizes // before erasure; right after; after VACUUM; after VACUUM FULL
	erase, del                         time.Duration
	start                              time.Duration // library: Inbox.Start's own time in the erase run
	eraseCPU, delCPU                   cpuUse
	left                               int64 // rows left after the delete run
	redeliver                          redelivery
}

// redelivery is what a redelivery after erasure did (library only).
type redelivery struct {
	same, changed inbox.SetResult
	handlerRuns   int64
	rowsChanged   int64 // rows no longer done with one attempt, erased and backdated
	rows          int64
	payloadErased bool  // Lookup of a redelivered event says so
	warnings      int64 // conflicting-duplicate warnings the library logged
}

// conflictWarnings counts, and keeps off the output, the library's
// warnings about conflicting duplicates, which the redelivery provokes.
type conflictWarnings struct {
	slog.Handler
	n *atomic.Int64
}

func (h *conflictWarnings) Handle(ctx context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "inbox: conflicting duplicate") {
		h.n.Add(1)
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h *conflictWarnings) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &conflictWarnings{Handler: h.Handler.WithAttrs(attrs), n: h.n}
}

func (h *conflictWarnings) WithGroup(name string) slog.Handler {
	return &conflictWarnings{Handler: h.Handler.WithGroup(name), n: h.n}
}

func (r redelivery) sameOK() bool {
	return r.same.Records == redeliverSample && r.same.Duplicates == redeliverSample && r.same.New == 0 &&
		r.same.Conflicting == 0 && r.same.Rows == 0
}

func (r redelivery) changedOK() bool {
	return r.changed.Conflicting == redeliverChanged && r.changed.New == 0 && r.changed.Rows == 0
}

func (r redelivery) untouched(n int) bool {
	return r.handlerRuns == 0 && r.rowsChanged == 0 && r.rows == int64(n) && r.payloadErased
}

// retentionReps is how many times each case runs: once, since a run
// changes the table it measures and a full-size case loads gigabytes;
// -reps repeats it.
func (b *bench) retentionReps() int {
	if b.repsSet {
		return b.reps
	}
	return 1
}

// retention runs Retention: for each payload size, the library's cycle
// (Set, drain, backdate, erase by retention, redeliver, delete by
// retention) and the minimal floor's (COPY done rows, erase with one
// UPDATE, delete with one DELETE), in turn.
func (b *bench) retention(ctx context.Context) error {
	minPool, _, err := b.newMinFloor(ctx)
	if err != nil {
		return err
	}
	defer minPool.Close()
	reps := b.retentionReps()
	for _, rc := range b.size.retention {
		ev := newRetentionEvents(rc.events, rc.payload)
		var lib, floor []retentionRun
		for range reps {
			r, err := b.retentionLibrary(ctx, ev)
			if err != nil {
				return fmt.Errorf("library, %s payloads: %w", fmtSize(rc.payload), err)
			}
			lib = append(lib, r)
			if r, err = b.retentionFloor(ctx, minPool, ev); err != nil {
				return fmt.Errorf("floor, %s payloads: %w", fmtSize(rc.payload), err)
			}
			floor = append(floor, r)
		}
		b.print(b.retentionTable(ctx, rc, reps, lib, floor))
	}
	// Leave nothing behind for later workloads.
	if _, err := b.lib.Exec(ctx, "TRUNCATE inbox_records, inbox_workers"); err != nil {
		return err
	}
	_, err = minPool.Exec(ctx, "TRUNCATE queue")
	return err
}

func (b *bench) retentionTable(ctx context.Context, rc retentionCase, reps int, lib, floor []retentionRun) *table {
	n := rc.events
	wl := "Retention " + fmtSize(rc.payload)
	runs := "one run"
	if reps > 1 {
		runs = fmt.Sprintf("median (min–max) of %d repetitions", reps)
	}
	t := newTable("Retention, %s payloads: %s events, one handler (one row each), payloads erased, then rows deleted; %s",
		fmtSize(rc.payload), group(int64(n)), runs)

	perEvent := func(f func(retentionRun) relSizes, part func(relSizes) float64) func(retentionRun) float64 {
		return func(r retentionRun) float64 { return part(f(r)) / float64(n) }
	}
	total := func(s relSizes) float64 { return float64(s.total) }
	tableB := func(s relSizes) float64 { return float64(s.table) }
	indexB := func(s relSizes) float64 { return float64(s.indexes) }
	sizeRow := func(metric string, f func(retentionRun) relSizes, target, result string) spread {
		l, fl := spreadBy(lib, perEvent(f, total)), spreadBy(floor, perEvent(f, total))
		t.add(metric, bytesCell(l), bytesCell(fl)+" minimal", fmtRatio(l.over(fl)), target, result)
		return l
	}
	split := func(runs []retentionRun, f func(retentionRun) relSizes) string {
		return groupF(spreadBy(runs, perEvent(f, tableB)).med) + " + " + groupF(spreadBy(runs, perEvent(f, indexB)).med) + " B"
	}
	before := func(r retentionRun) relSizes { return r.before }
	after := func(r retentionRun) relSizes { return r.after }
	vacuumed := func(r retentionRun) relSizes { return r.vacuumed }
	compacted := func(r retentionRun) relSizes { return r.compacted }

	sizeRow("bytes/event, done, before erasure (VACUUM FULL)", before, "", "")
	t.add("  of which table (heap, TOAST) + indexes", split(lib, before), split(floor, before)+" minimal", "", "", "")
	sizeRow("bytes/event right after erasure", after, "", "")
	sizeRow("bytes/event after erasure + VACUUM", vacuumed, "", "")
	l := spreadBy(lib, perEvent(compacted, total))
	fl := spreadBy(floor, perEvent(compacted, total))
	t.add("bytes/event after erasure + VACUUM FULL", bytesCell(l), bytesCell(fl)+" minimal", fmtRatio(l.over(fl)),
		fmt.Sprintf("<= %d B", bytesTarget),
		b.check(wl, fmt.Sprintf("<= %d B/event after erasure (VACUUM FULL)", bytesTarget), fmt.Sprintf("%.0f B", l.med), l.med <= bytesTarget))
	t.add("  of which table (heap, TOAST) + indexes", split(lib, compacted), split(floor, compacted)+" minimal", "", "", "")
	avgRow := func(runs []retentionRun) string {
		a := spreadBy(runs, func(r retentionRun) float64 { return r.before.avgRow })
		z := spreadBy(runs, func(r retentionRun) float64 { return r.compacted.avgRow })
		return fmt.Sprintf("%s -> %s B", groupF(a.med), groupF(z.med))
	}
	t.add("avg pg_column_size(row), before -> after", avgRow(lib), avgRow(floor)+" minimal", "", "", "")

	timeRows := func(what string, d func(retentionRun) time.Duration, cpu func(retentionRun) cpuUse, floorName string) {
		ld := spreadBy(lib, func(r retentionRun) float64 { return ms(d(r)) })
		fd := spreadBy(floor, func(r retentionRun) float64 { return ms(d(r)) })
		t.add(what+" run (library: Start -> last_run_at)", msCell(ld), msCell(fd)+" "+floorName, fmtRatio(ld.over(fd)), "", "")
		perRow := func(r retentionRun) float64 { return float64(d(r)) / float64(time.Microsecond) / float64(n) }
		lp, fp := spreadBy(lib, perRow), spreadBy(floor, perRow)
		t.add("  time per row "+what+"d", usCell(lp), usCell(fp), fmtRatio(lp.over(fp)), "", "")
		pgPerRow := func(r retentionRun) float64 {
			_, pg, _ := cpu(r).perEvent(n)
			return pg
		}
		lc, fc := spreadBy(lib, pgPerRow), spreadBy(floor, pgPerRow)
		t.add("  PostgreSQL CPU per row "+what+"d", usCell(lc), usCell(fc), fmtRatio(lc.over(fc)), "", "")
	}
	timeRows("erase", func(r retentionRun) time.Duration { return r.erase }, func(r retentionRun) cpuUse { return r.eraseCPU }, "one UPDATE")
	t.add("  of which Inbox.Start", msCell(spreadBy(lib, func(r retentionRun) float64 { return ms(r.start) })), "", "", "", "")
	timeRows("delete", func(r retentionRun) time.Duration { return r.del }, func(r retentionRun) cpuUse { return r.delCPU }, "one DELETE")

	var libLeft, floorLeft int64
	for i := range lib {
		libLeft, floorLeft = max(libLeft, lib[i].left), max(floorLeft, floor[i].left)
	}
	t.add("rows left after the delete run", group(libLeft), group(floorLeft), "", "0",
		b.check(wl, "retention deletes every row past the dedup window", group(libLeft)+" left", libLeft == 0))

	// A repetition that failed a redelivery check is shown; else the last.
	shown := lib[len(lib)-1].redeliver
	sameOK, changedOK, untouched := true, true, true
	for _, r := range lib {
		if !r.redeliver.sameOK() || !r.redeliver.changedOK() || !r.redeliver.untouched(n) {
			shown = r.redeliver
		}
		sameOK = sameOK && r.redeliver.sameOK()
		changedOK = changedOK && r.redeliver.changedOK()
		untouched = untouched && r.redeliver.untouched(n)
	}
	counts := func(s inbox.SetResult) string {
		return fmt.Sprintf("%s new, %s dup, %s conflicting", group(int64(s.New)), group(int64(s.Duplicates)), group(int64(s.Conflicting)))
	}
	t.add(fmt.Sprintf("redeliver %s after erasure", group(redeliverSample)), counts(shown.same), "-", "",
		counts(inbox.SetResult{Duplicates: redeliverSample}),
		b.check(wl, fmt.Sprintf("redelivery after erasure: %s duplicates", group(redeliverSample)), counts(shown.same), sameOK))
	t.add(fmt.Sprintf("redeliver %d with another payload", redeliverChanged), counts(shown.changed), "-", "",
		counts(inbox.SetResult{Conflicting: redeliverChanged}),
		b.check(wl, fmt.Sprintf("redelivery after erasure: %d conflicting", redeliverChanged), counts(shown.changed), changedOK))
	figure := fmt.Sprintf("%d runs, %d rows changed", shown.handlerRuns, shown.rowsChanged)
	t.add("  then: handler runs, rows changed", figure, "-", "", "0 runs, 0 rows",
		b.check(wl, "redelivery after erasure runs and changes nothing", figure, untouched))
	t.add("  Lookup: PayloadErased", fmt.Sprint(shown.payloadErased), "-", "", "", "")
	t.add("  conflict warnings the library logged", fmt.Sprint(shown.warnings), "-", "", "", "")

	t.note("library: Set in batches of %s, drained by an Inbox (default options, a no-op handler) so every row is done", group(setBatch))
	t.note("with attempts = 1; then updated_at is set to now() - %d days by one UPDATE, and VACUUM FULL and a CHECKPOINT", erasedAgeDays)
	t.note("run before the first measurement; then an Inbox with WithRetention(%v, %d) and WithPayloadRetention(%d) is", retentionInterval, retentionDedupDays, retentionErasDays)
	t.note("started and stopped once inbox_maintenance.last_run_at moves; the time runs from just before Start to")
	t.note("last_run_at (server clocks), so it includes Start (schema check, LISTEN, first claim) and the wait for the")
	t.note("first retention attempt (a random part of the %v interval); CPU is PostgreSQL's (all its processes, /proc,", retentionInterval)
	t.note("10 ms ticks) over the same window, divided by the rows; every payload was checked erased (payload IS NULL)")
	t.note("delete run: updated_at set to now() - %d days (past the %d-day window), VACUUM, CHECKPOINT, then the same", deletedAgeDays, retentionDedupDays)
	t.note("retention Inbox until last_run_at moves")
	t.note("sizes: pg_total_relation_size / events (heap, TOAST, free space and visibility maps, all indexes);")
	t.note("'right after' is the table as retention leaves it (freed space is reusable, not returned); then VACUUM;")
	t.note("then VACUUM FULL, a compacted steady state (it keeps the table's %s); pg_column_size of a whole", b.fillfactor(ctx))
	t.note("row counts a TOASTed payload inline")
	t.note("floor: %s.queue (W1's minimal table) with the same ids and payloads, COPYed as done rows with due_at %d", minSchema, erasedAgeDays)
	t.note("days ago, VACUUM FULL; erase: one UPDATE setting payload to '' (NOT NULL there) for done rows %d to %d", retentionErasDays, retentionDedupDays)
	t.note("days old; delete: due_at moved %d days back, VACUUM, CHECKPOINT, then one DELETE of done rows past %d days;", deletedAgeDays, retentionDedupDays)
	t.note("its times are the statements' own")
	t.note("payloads are random bytes, which PostgreSQL cannot compress: a TOASTed payload costs its full size")
	t.note("redelivery: after the VACUUM FULL, an Inbox (default options) with a counting handler runs while %s of the", group(redeliverSample))
	t.note("events are Set again with the same ids and payloads (SetWithResult, one call), then %d of them with one", redeliverChanged)
	t.note("byte changed; 500 ms later: handler runs, and rows not done, with attempts <> 1, a payload, or a newer")
	t.note("updated_at; Lookup of one redelivered event reports PayloadErased; the library's warnings about the")
	t.note("conflicting duplicates are counted and kept off this output")
	if reps == 1 {
		t.note("each case runs once (it changes the table it measures); -reps N repeats library and floor cycles in turn")
	}
	return t
}

// fillfactor returns the library table's storage parameters for notes.
func (b *bench) fillfactor(ctx context.Context) string {
	var opts []string
	if err := b.lib.QueryRow(ctx, `SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = 'inbox_records'::regclass`).
		Scan(&opts); err != nil {
		return "unknown"
	}
	for _, o := range opts {
		if strings.HasPrefix(o, "fillfactor=") {
			return o
		}
	}
	return "default fillfactor"
}

// retentionLibrary is one library cycle of one case.
func (b *bench) retentionLibrary(ctx context.Context, ev *retentionEvents) (run retentionRun, err error) {
	n := len(ev.ids)
	if err := b.reset(ctx, b.lib); err != nil {
		return run, err
	}
	ib, err := b.newInbox(b.lib, noop)
	if err != nil {
		return run, err
	}
	c := ib.Client()
	for start := 0; start < n; start += setBatch {
		recs := make([]*inbox.Record, 0, setBatch)
		for seq := start; seq < min(start+setBatch, n); seq++ {
			recs = append(recs, ev.record(seq, ev.payload(seq)))
		}
		if err := c.Set(ctx, recs...); err != nil {
			return run, fmt.Errorf("set: %w", err)
		}
	}
	if _, err := b.libDrain(ctx, b.lib, n); err != nil {
		return run, fmt.Errorf("drain: %w", err)
	}
	done, attempts, err := tally(ctx, b.lib)
	if err != nil {
		return run, err
	}
	if done != int64(n) || attempts != int64(n) {
		return run, fmt.Errorf("drain left %d done rows with %d attempts, want %d and %d", done, attempts, n, n)
	}

	// Erase.
	if err := backdate(ctx, b.lib, `UPDATE inbox_records SET updated_at = now() - make_interval(days => $1)`, erasedAgeDays); err != nil {
		return run, err
	}
	if run.before, err = b.compact(ctx, b.lib, "inbox_records"); err != nil {
		return run, err
	}
	if run.erase, run.start, run.eraseCPU, err = b.retentionPass(ctx); err != nil {
		return run, fmt.Errorf("erase: %w", err)
	}
	var erased int64
	if err := b.lib.QueryRow(ctx, `SELECT count(*) FROM inbox_records WHERE payload IS NULL`).Scan(&erased); err != nil {
		return run, err
	}
	if erased != int64(n) {
		return run, fmt.Errorf("retention erased %d payloads of %d", erased, n)
	}
	if run.after, run.vacuumed, run.compacted, err = b.afterErasure(ctx, b.lib, "inbox_records"); err != nil {
		return run, err
	}
	if run.redeliver, err = b.redeliver(ctx, ev); err != nil {
		return run, fmt.Errorf("redeliver: %w", err)
	}

	// Delete.
	if err := backdate(ctx, b.lib, `UPDATE inbox_records SET updated_at = now() - make_interval(days => $1)`, deletedAgeDays); err != nil {
		return run, err
	}
	if err := b.vacuum(ctx, b.lib, "inbox_records", ""); err != nil {
		return run, err
	}
	if run.del, _, run.delCPU, err = b.retentionPass(ctx); err != nil {
		return run, fmt.Errorf("delete: %w", err)
	}
	err = b.lib.QueryRow(ctx, `SELECT count(*) FROM inbox_records`).Scan(&run.left)
	return run, err
}

// retentionPass starts an Inbox with a short retention interval on the
// library's table and stops it once it has finished one retention run. It
// returns the time from just before Start to the run's last_run_at (both
// by the server's clock), Start's own time, and the CPU used until the
// run was seen finished.
func (b *bench) retentionPass(ctx context.Context) (took, start time.Duration, cpu cpuUse, err error) {
	const lastRunSQL = `SELECT last_run_at FROM inbox_maintenance WHERE task = 'retention'`
	var last *time.Time
	if err := b.lib.QueryRow(ctx, lastRunSQL).Scan(&last); err != nil {
		return 0, 0, cpu, fmt.Errorf("read last_run_at: %w", err)
	}
	reg := inbox.NewRegistry()
	reg.On(eventType, noop)
	ib, err := inbox.New(b.lib, reg, inbox.WithLogger(b.log),
		inbox.WithRetention(retentionInterval, retentionDedupDays), inbox.WithPayloadRetention(retentionErasDays))
	if err != nil {
		return 0, 0, cpu, err
	}
	var t0 time.Time
	if err := b.lib.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&t0); err != nil {
		return 0, 0, cpu, err
	}
	stopCPU := b.startCPU(ctx)
	s := time.Now()
	if err := ib.Start(ctx); err != nil {
		return 0, 0, cpu, err
	}
	start = time.Since(s)
	defer stopInbox(ib)
	deadline := time.Now().Add(retentionDeadline)
	for {
		var at *time.Time
		if err := b.lib.QueryRow(ctx, lastRunSQL).Scan(&at); err != nil {
			return 0, 0, cpu, fmt.Errorf("read last_run_at: %w", err)
		}
		if at != nil && (last == nil || at.After(*last)) {
			return at.Sub(t0), start, stopCPU(), nil
		}
		if time.Now().After(deadline) {
			return 0, 0, cpu, fmt.Errorf("no retention run finished within %v", retentionDeadline)
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return 0, 0, cpu, ctx.Err()
		}
	}
}

// redeliver runs a counting worker while it Sets a sample of the events
// again, first as they were, then some with another payload, and reports
// what Set said and what changed.
func (b *bench) redeliver(ctx context.Context, ev *retentionEvents) (r redelivery, err error) {
	count := newCounter(-1) // never reached: every call counts
	warned := &conflictWarnings{Handler: b.log.Handler(), n: new(atomic.Int64)}
	reg := inbox.NewRegistry()
	reg.On(eventType, count.handler())
	ib, err := inbox.New(b.lib, reg, inbox.WithLogger(slog.New(warned)))
	if err != nil {
		return r, err
	}
	if err := ib.Start(ctx); err != nil {
		return r, err
	}
	defer stopInbox(ib)
	if err := b.waitListening(ctx); err != nil {
		return r, err
	}
	seqs := ev.sample(redeliverSample)
	same := make([]*inbox.Record, len(seqs))
	for i, seq := range seqs {
		same[i] = ev.record(seq, ev.payload(seq))
	}
	if r.same, err = ib.Client().SetWithResult(ctx, same...); err != nil {
		return r, err
	}
	changed := make([]*inbox.Record, min(redeliverChanged, len(seqs)))
	for i := range changed {
		p := ev.payload(seqs[i])
		p[0] ^= 0xff
		changed[i] = ev.record(seqs[i], p)
	}
	if r.changed, err = ib.Client().SetWithResult(ctx, changed...); err != nil {
		return r, err
	}
	time.Sleep(500 * time.Millisecond) // a stored row would be claimed within milliseconds
	r.handlerRuns, r.warnings = count.n.Load(), warned.n.Load()
	states, err := ib.Lookup(ctx, same[0].ID())
	if err != nil {
		return r, err
	}
	r.payloadErased = len(states) == 1 && states[0].PayloadErased && states[0].Status == inbox.Done
	err = b.lib.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE status <> 'done' OR attempts <> 1 OR payload IS NOT NULL
		                        OR updated_at > now() - make_interval(days => $1) + interval '1 hour'),
		       count(*)
		FROM inbox_records`, erasedAgeDays).Scan(&r.rowsChanged, &r.rows)
	return r, err
}

// The minimal floor's statements; its table has no updated_at, so due_at
// (which the floor's drain sets when it claims) stands in for it.
const (
	floorEraseSQL = `
UPDATE queue SET payload = ''
WHERE status = 'done' AND payload <> ''
  AND due_at < now() - make_interval(days => $1) AND due_at >= now() - make_interval(days => $2)`

	floorDeleteSQL = `
DELETE FROM queue
WHERE status IN ('done', 'dead') AND due_at < now() - make_interval(days => $1)`
)

// retentionFloor is one minimal-floor cycle of one case.
func (b *bench) retentionFloor(ctx context.Context, pool *pgxpool.Pool, ev *retentionEvents) (run retentionRun, err error) {
	n := len(ev.ids)
	if _, err := pool.Exec(ctx, "TRUNCATE queue"); err != nil {
		return run, err
	}
	_, err = copyEvents(ctx, pool, "queue", []string{"id", "payload", "status", "due_at"}, n, 1,
		func(seq, _ int, now time.Time) []any {
			return []any{ev.ids[seq], ev.payload(seq), "done", now.AddDate(0, 0, -erasedAgeDays)}
		})
	if err != nil {
		return run, err
	}
	if run.before, err = b.compact(ctx, pool, "queue"); err != nil {
		return run, err
	}
	var erased int64
	if run.erase, run.eraseCPU, erased, err = b.timedExec(ctx, pool, floorEraseSQL, retentionErasDays, retentionDedupDays); err != nil {
		return run, fmt.Errorf("erase: %w", err)
	}
	if erased != int64(n) {
		return run, fmt.Errorf("erase: %d payloads of %d", erased, n)
	}
	if run.after, run.vacuumed, run.compacted, err = b.afterErasure(ctx, pool, "queue"); err != nil {
		return run, err
	}
	if err := backdate(ctx, pool, `UPDATE queue SET due_at = now() - make_interval(days => $1)`, deletedAgeDays); err != nil {
		return run, err
	}
	if err := b.vacuum(ctx, pool, "queue", ""); err != nil {
		return run, err
	}
	if run.del, run.delCPU, _, err = b.timedExec(ctx, pool, floorDeleteSQL, retentionDedupDays); err != nil {
		return run, fmt.Errorf("delete: %w", err)
	}
	err = pool.QueryRow(ctx, `SELECT count(*) FROM queue`).Scan(&run.left)
	return run, err
}

// timedExec runs one statement and returns its time, the CPU used and the
// rows it affected.
func (b *bench) timedExec(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) (time.Duration, cpuUse, int64, error) {
	stopCPU := b.startCPU(ctx)
	t := time.Now()
	tag, err := pool.Exec(ctx, sql, args...)
	d := time.Since(t)
	cpu := stopCPU()
	return d, cpu, tag.RowsAffected(), err
}

// backdate runs sql, an UPDATE that moves a time column back $1 days.
func backdate(ctx context.Context, pool *pgxpool.Pool, sql string, days int) error {
	if _, err := pool.Exec(ctx, sql, days); err != nil {
		return fmt.Errorf("backdate: %w", err)
	}
	return nil
}

// vacuum runs VACUUM with the given options ("" or "FULL") on table, then
// a CHECKPOINT.
func (b *bench) vacuum(ctx context.Context, pool *pgxpool.Pool, table, opts string) error {
	if _, err := pool.Exec(ctx, "VACUUM "+opts+" "+pgx.Identifier{table}.Sanitize()); err != nil {
		return fmt.Errorf("vacuum %s: %w", opts, err)
	}
	return b.checkpoint(ctx, pool)
}

// compact runs VACUUM FULL on table and measures it.
func (b *bench) compact(ctx context.Context, pool *pgxpool.Pool, table string) (relSizes, error) {
	if err := b.vacuum(ctx, pool, table, "FULL"); err != nil {
		return relSizes{}, err
	}
	return measureRel(ctx, pool, table)
}

// afterErasure measures table as left, after VACUUM, and after VACUUM FULL.
func (b *bench) afterErasure(ctx context.Context, pool *pgxpool.Pool, table string) (left, vacuumed, compacted relSizes, err error) {
	if left, err = measureRel(ctx, pool, table); err != nil {
		return
	}
	if err = b.vacuum(ctx, pool, table, ""); err != nil {
		return
	}
	if vacuumed, err = measureRel(ctx, pool, table); err != nil {
		return
	}
	compacted, err = b.compact(ctx, pool, table)
	return
}

// measureRel returns the size of table (in pool's schema) and the average
// size of its rows as whole-row values.
func measureRel(ctx context.Context, pool *pgxpool.Pool, table string) (s relSizes, err error) {
	err = pool.QueryRow(ctx, `SELECT pg_total_relation_size(c), pg_table_size(c), pg_indexes_size(c)
		FROM (SELECT $1::text::regclass AS c) r`, table).Scan(&s.total, &s.table, &s.indexes)
	if err != nil {
		return s, fmt.Errorf("size of %s: %w", table, err)
	}
	var avg *float64
	id := pgx.Identifier{table}.Sanitize()
	if err := pool.QueryRow(ctx, "SELECT avg(pg_column_size(t.*))::float8 FROM "+id+" t").Scan(&avg); err != nil {
		return s, fmt.Errorf("row size of %s: %w", table, err)
	}
	if avg == nil {
		return s, errors.New("row size of an empty table")
	}
	s.avgRow = *avg
	return s, nil
}

// fmtSize formats a payload size: 64 B, 1 KiB, 16 KiB.
func fmtSize(n int) string {
	if n >= 1<<10 && n%(1<<10) == 0 {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// bytesCell formats a spread of bytes.
func bytesCell(s spread) string {
	return s.format(groupF, " B")
}
