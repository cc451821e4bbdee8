package dashboard

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
)

// The actions. Each is a POST that passed the checks of ServeHTTP and
// csrf; it acts through the Admin, logs what it did, leaves a flash
// message and redirects (303) back to the page it came from.

// backRE matches the pages an action may return to: a path relative to
// the dashboard's root, with an optional query; nothing that could leave
// the dashboard (no scheme, no leading slash, no backslash).
var backRE = regexp.MustCompile(`^([a-z][a-z0-9/_-]*)?(\?[^\\\x00-\x20\x7f]*)?$`)

// back redirects to the page the form came from (its "back" field), or
// to fallback.
func (s *server) back(w http.ResponseWriter, r *http.Request, fallback string, f flash) {
	s.csrf.setFlash(w, r, f)
	target := fallback
	if v, ok := r.PostForm["back"]; ok && len(v) == 1 && backRE.MatchString(v[0]) {
		target = v[0]
	}
	redirect(w, r, target)
}

// groupFilter returns the filter of the dead group the form names.
func groupFilter(r *http.Request) (inbox.Filter, string, error) {
	f := inbox.Filter{
		Fingerprint: r.PostForm.Get("fingerprint"),
		EventType:   r.PostForm.Get("event_type"),
		HandlerKey:  r.PostForm.Get("handler_key"),
	}
	if f.Fingerprint == "" {
		return f, "", badRequest("The form names no dead group (its fingerprint is missing).")
	}
	label := "group " + f.Fingerprint
	if f.EventType != "" || f.HandlerKey != "" {
		label += " (" + f.EventType + " / " + f.HandlerKey + ")"
	}
	return f, label, nil
}

func (s *server) replayGroup(w http.ResponseWriter, r *http.Request) error {
	f, label, err := groupFilter(r)
	if err != nil {
		return err
	}
	opts := inbox.ActionOptions{Actor: s.actor, Reason: "replayed from the dashboard: dead " + label}
	res, err := s.admin.Replay(r.Context(), f, opts)
	var fl flash
	switch {
	case errors.Is(err, inbox.ErrPayloadErased):
		fl = flash{"warn", fmt.Sprintf("Replayed %s of %s; %s left dead: retention erased their payloads, so their events must be stored again.",
			rowsText(res.Changed), label, rowsText(res.PayloadErased))}
	case err != nil:
		return err
	case res.Changed == 0:
		fl = flash{"warn", "No row replayed: " + label + " has no dead row left."}
	default:
		fl = flash{"ok", fmt.Sprintf("Replayed %s of %s.", rowsText(res.Changed), label)}
	}
	s.log.Info("dashboard: replayed a dead group", "fingerprint", f.Fingerprint, "event_type", f.EventType,
		"handler_key", f.HandlerKey, "rows", res.Changed, "payload_erased", res.PayloadErased, "actor", s.actor)
	s.back(w, r, "dead", fl)
	return nil
}

func (s *server) discardGroup(w http.ResponseWriter, r *http.Request) error {
	f, label, err := groupFilter(r)
	if err != nil {
		return err
	}
	// A fingerprint with no statuses selects the group's dead rows.
	opts := inbox.ActionOptions{Actor: s.actor, Reason: "dead " + label + " discarded from the dashboard"}
	res, err := s.admin.Discard(r.Context(), f, opts)
	if err != nil {
		return err
	}
	fl := flash{"ok", fmt.Sprintf("Discarded %s of %s: they stay dead, marked as handled.", rowsText(res.Changed), label)}
	if res.Changed == 0 {
		fl = flash{"warn", "No row discarded: " + label + " has no dead row left."}
	}
	s.log.Info("dashboard: discarded a dead group", "fingerprint", f.Fingerprint, "event_type", f.EventType,
		"handler_key", f.HandlerKey, "rows", res.Changed, "actor", s.actor)
	s.back(w, r, "dead", fl)
	return nil
}

func (s *server) replayRow(w http.ResponseWriter, r *http.Request) error {
	v, key := r.PostForm.Get("event_id"), r.PostForm.Get("handler_key")
	id, err := uuid.Parse(v)
	if err != nil {
		return badRequest("%q is not an event id: an event id is a UUID", v)
	}
	row := id.String() + " / " + key
	err = s.admin.ReplayRow(r.Context(), id, key, inbox.ActionOptions{
		Actor: s.actor, Reason: "replayed from the dashboard",
	})
	var fl flash
	switch {
	case errors.Is(err, inbox.ErrNotFound):
		fl = flash{"warn", "Row " + row + " was not replayed: it is not stored, or not dead, failed or done (it may be running)."}
	case errors.Is(err, inbox.ErrPayloadErased):
		fl = flash{"warn", "Row " + row + " was not replayed: retention erased its payload, so its event must be stored again."}
	case err != nil:
		return err
	default:
		fl = flash{"ok", "Replayed row " + row + "."}
		s.log.Info("dashboard: replayed a row", "event_id", id, "handler_key", key, "actor", s.actor)
	}
	s.back(w, r, "events/"+id.String(), fl)
	return nil
}

func (s *server) pause(w http.ResponseWriter, r *http.Request) error {
	p := inbox.Pause{EventType: r.PostForm.Get("event_type"), HandlerKey: r.PostForm.Get("handler_key")}
	if err := s.admin.Pause(r.Context(), p.EventType, p.HandlerKey, s.actor, r.PostForm.Get("reason")); err != nil {
		return err
	}
	s.log.Info("dashboard: paused", "event_type", p.EventType, "handler_key", p.HandlerKey, "actor", s.actor)
	s.back(w, r, "pauses", flash{"ok", "Paused " + describePause(p) + ": workers claim none of its rows until it is resumed."})
	return nil
}

func (s *server) resume(w http.ResponseWriter, r *http.Request) error {
	p := inbox.Pause{EventType: r.PostForm.Get("event_type"), HandlerKey: r.PostForm.Get("handler_key")}
	if p.EventType == "" && p.HandlerKey == "" {
		return badRequest("The form names no pause: give an event type, a handler key or both.")
	}
	err := s.admin.Resume(r.Context(), p.EventType, p.HandlerKey)
	var fl flash
	switch {
	case errors.Is(err, inbox.ErrNotFound):
		fl = flash{"warn", "Nothing resumed: there is no pause of " + describePause(p) + " (it may have been resumed already)."}
	case err != nil:
		return err
	default:
		fl = flash{"ok", "Resumed " + describePause(p) + "."}
		s.log.Info("dashboard: resumed", "event_type", p.EventType, "handler_key", p.HandlerKey, "actor", s.actor)
	}
	s.back(w, r, "pauses", fl)
	return nil
}

// rowsText says "1 row" or "12 rows".
func rowsText(n int64) string {
	if n == 1 {
		return "1 row"
	}
	return formatNum(n) + " rows"
}
