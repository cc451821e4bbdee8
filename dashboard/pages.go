package dashboard

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
)

// The read pages. Each reads what it shows through the Admin and renders
// it; none changes anything.

// overviewData is the overview page's data.
type overviewData struct {
	Pairs   []pairView
	Totals  pairView
	MaxLag  time.Duration
	Workers int
	Pauses  int
}

// pairView is one row of the overview.
type pairView struct {
	inbox.HandlerStats
	DoneHour, DeadHour int64
	Spark              sparkline
	// ExactPause reports a pause of exactly this pair, which Resume
	// lifts; PausedBy describes a wider pause that covers it.
	ExactPause bool
	PausedBy   string
}

func (s *server) overview(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	stats, err := s.admin.Stats(ctx)
	if err != nil {
		return err
	}
	pauses, err := s.admin.Pauses(ctx)
	if err != nil {
		return err
	}
	workers, err := s.admin.Workers(ctx)
	if err != nil {
		return err
	}
	d := overviewData{Workers: len(workers), Pauses: len(pauses)}
	t := &d.Totals
	for _, h := range stats {
		v := pairView{HandlerStats: h, Spark: newSparkline(h.PerMinute)}
		v.DoneHour, v.DeadHour = h.FinishedLastHour()
		for _, p := range pauses {
			switch {
			case p.EventType == h.EventType && p.HandlerKey == h.HandlerKey:
				v.ExactPause = true
			case (p.EventType == "" || p.EventType == h.EventType) && (p.HandlerKey == "" || p.HandlerKey == h.HandlerKey):
				v.PausedBy = describePause(p)
			}
		}
		d.Pairs = append(d.Pairs, v)
		t.Pending += h.Pending
		t.InProgress += h.InProgress
		t.Failed += h.Failed
		t.Done += h.Done
		t.Dead += h.Dead
		t.DoneHour += v.DoneHour
		t.DeadHour += v.DeadHour
		d.MaxLag = max(d.MaxLag, h.Lag)
	}
	p := s.newPage(w, r, "overview", "Overview", "overview")
	p.Data = d
	s.render(w, r, http.StatusOK, p)
	return nil
}

// describePause says what a pause covers.
func describePause(p inbox.Pause) string {
	switch {
	case p.EventType == "":
		return "handler " + p.HandlerKey + " of every event type"
	case p.HandlerKey == "":
		return "every handler of " + p.EventType
	default:
		return p.EventType + " / " + p.HandlerKey
	}
}

// deadData is the dead page's data.
type deadData struct {
	EventType, HandlerKey string
	Groups                []groupView
	Rows                  int64
}

type groupView struct {
	inbox.DeadGroup
	// Discarded reports a group of rows discarded by an operator: they
	// can be replayed, not discarded again.
	Discarded bool
}

// discardedErrorType is the error type of the rows Admin.Discard made
// dead.
const discardedErrorType = "inbox.discarded"

func (s *server) dead(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	d := deadData{EventType: q.Get("event_type"), HandlerKey: q.Get("handler_key")}
	groups, err := s.admin.DeadGroups(r.Context(), inbox.Filter{EventType: d.EventType, HandlerKey: d.HandlerKey}, 0)
	if err != nil {
		return err
	}
	for _, g := range groups {
		d.Groups = append(d.Groups, groupView{DeadGroup: g, Discarded: g.ErrorType == discardedErrorType})
		d.Rows += g.Count
	}
	p := s.newPage(w, r, "dead", "Dead rows", "dead")
	p.Data = d
	s.render(w, r, http.StatusOK, p)
	return nil
}

// rowsData is the rows page's data: the filter as typed, for the form,
// and a page of rows.
type rowsData struct {
	EventID, EventType, HandlerKey, Error, Fingerprint, Since, Until string
	Statuses                                                         map[string]bool
	StatusNames                                                      []string
	Limit                                                            int
	After                                                            string
	Rows                                                             []inbox.RecordState
	Next                                                             string
	Filtered                                                         bool
}

// statusNames are the statuses as the rows page names them, in lifecycle
// order.
var statusNames = []string{"pending", "progress", "failed", "done", "dead"}

// defaultRowsLimit and maxRowsLimit bound the rows page's page size.
const (
	defaultRowsLimit = 50
	maxRowsLimit     = 1000
)

// timeLayouts are the forms the rows page accepts for since and until:
// RFC 3339, an HTML datetime-local field's, or a date (all UTC unless the
// text says otherwise).
var timeLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"}

func parseTime(field, v string) (time.Time, error) {
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, badRequest("%s %q is not a time; use RFC 3339 (2026-01-02T15:04:05Z) or 2026-01-02T15:04 (UTC)", field, v)
}

func (s *server) rows(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	d := rowsData{
		EventID: strings.TrimSpace(q.Get("event_id")), EventType: q.Get("event_type"), HandlerKey: q.Get("handler_key"),
		Error: q.Get("error"), Fingerprint: q.Get("fingerprint"), Since: q.Get("since"), Until: q.Get("until"),
		Statuses: map[string]bool{}, StatusNames: statusNames, Limit: defaultRowsLimit, After: q.Get("after"),
	}
	f := inbox.Filter{EventType: d.EventType, HandlerKey: d.HandlerKey, ErrorContains: d.Error, Fingerprint: d.Fingerprint}
	var err error
	if d.EventID != "" {
		if f.EventID, err = uuid.Parse(d.EventID); err != nil {
			return badRequest("event id %q is not a UUID", d.EventID)
		}
	}
	for _, v := range q["status"] {
		switch v {
		case "pending", "null":
			f.Statuses = append(f.Statuses, inbox.Null)
			d.Statuses["pending"] = true
		case "":
		default:
			f.Statuses = append(f.Statuses, inbox.Status(v)) // List rejects an unknown status
			d.Statuses[v] = true
		}
	}
	if d.Since != "" {
		if f.Since, err = parseTime("since", d.Since); err != nil {
			return err
		}
	}
	if d.Until != "" {
		if f.Until, err = parseTime("until", d.Until); err != nil {
			return err
		}
	}
	if v := q.Get("limit"); v != "" {
		if d.Limit, err = strconv.Atoi(v); err != nil || d.Limit < 1 || d.Limit > maxRowsLimit {
			return badRequest("limit %q is not a number from 1 to %d", v, maxRowsLimit)
		}
	}
	d.Filtered = !f.IsZero()
	page, err := s.admin.List(r.Context(), f, d.After, d.Limit)
	if err != nil {
		return err
	}
	d.Rows, d.Next = page.Rows, page.Next
	p := s.newPage(w, r, "rows", "Rows", "rows")
	p.Data = d
	s.render(w, r, http.StatusOK, p)
	return nil
}

// Query returns the rows page's filter as query pairs for link, with
// after as the page token.
func (d rowsData) Query(after string) []string {
	kv := []string{"event_id", d.EventID, "event_type", d.EventType, "handler_key", d.HandlerKey,
		"error", d.Error, "fingerprint", d.Fingerprint, "since", d.Since, "until", d.Until}
	for _, n := range statusNames {
		if d.Statuses[n] {
			kv = append(kv, "status", n)
		}
	}
	if d.Limit != defaultRowsLimit {
		kv = append(kv, "limit", strconv.Itoa(d.Limit))
	}
	return append(kv, "after", after)
}

// search finds an event by id: it redirects to the event's page.
func (s *server) search(w http.ResponseWriter, r *http.Request) error {
	v := strings.TrimSpace(r.URL.Query().Get("id"))
	id, err := uuid.Parse(v)
	if err != nil {
		return badRequest("%q is not an event id: an event id is a UUID, such as 0192f0c4-8b4e-7c51-9a3e-2f1d5b6c7a80", v)
	}
	redirect(w, r, "events/"+id.String())
	return nil
}

// eventData is the event page's data.
type eventData struct {
	*inbox.Event
	Payload payloadView
}

// replayable reports whether the dashboard offers to replay a row.
func replayable(st inbox.RecordState) bool {
	return !st.PayloadErased && slices.Contains([]inbox.Status{inbox.Dead, inbox.Failed, inbox.Done}, st.Status)
}

func (s *server) event(w http.ResponseWriter, r *http.Request) error {
	v := r.PathValue("id")
	id, err := uuid.Parse(v)
	if err != nil {
		return badRequest("%q is not an event id: an event id is a UUID", v)
	}
	ev, err := s.admin.Show(r.Context(), id)
	if err != nil {
		return err
	}
	p := s.newPage(w, r, "event", "Event "+id.String(), "")
	p.Data = eventData{Event: ev, Payload: newPayloadView(ev.Payload, ev.PayloadErased)}
	s.render(w, r, http.StatusOK, p)
	return nil
}

// workersData is the workers page's data.
type workersData struct {
	Workers         []inbox.Worker
	Applied, Latest int64
}

func (s *server) workers(w http.ResponseWriter, r *http.Request) error {
	workers, err := s.admin.Workers(r.Context())
	if err != nil {
		return err
	}
	d := workersData{Workers: workers}
	if d.Applied, d.Latest, err = s.admin.SchemaVersion(r.Context()); err != nil {
		return err
	}
	p := s.newPage(w, r, "workers", "Workers", "workers")
	p.Data = d
	s.render(w, r, http.StatusOK, p)
	return nil
}

// pausesData is the pauses page's data; EventType and HandlerKey fill
// the pause form.
type pausesData struct {
	Pauses                []inbox.Pause
	EventType, HandlerKey string
}

func (s *server) pauses(w http.ResponseWriter, r *http.Request) error {
	pauses, err := s.admin.Pauses(r.Context())
	if err != nil {
		return err
	}
	p := s.newPage(w, r, "pauses", "Pauses", "pauses")
	p.Data = pausesData{Pauses: pauses, EventType: r.URL.Query().Get("event_type"), HandlerKey: r.URL.Query().Get("handler_key")}
	s.render(w, r, http.StatusOK, p)
	return nil
}
