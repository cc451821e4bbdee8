// Package dashboard serves the inbox's web dashboard: server-rendered
// pages over an [inbox.Admin].
//
// The pages are plain HTML rendered on the server, with an embedded style
// sheet and one small embedded script that refreshes read pages (a
// <meta http-equiv="refresh"> does it when scripts are off):
//
//   - / — the overview: per (event type, handler key) pair, the rows in
//     each status, the lag, the rows finished in each of the last 60
//     minutes, and whether a pause covers it;
//   - /dead — dead rows grouped by failure ([inbox.Admin.DeadGroups]);
//   - /rows — rows by filter, a page at a time ([inbox.Admin.List]);
//   - /events/{id} — one event: its rows, payload and history
//     ([inbox.Admin.Show]); /event?id= finds one by id;
//   - /workers — the live workers and the schema's version;
//   - /pauses — the pauses in force.
//
// The dashboard is read-only unless [Options].Actions is set: then the
// dead groups can be replayed or discarded, single rows replayed, and
// handlers paused and resumed, each through a POST form protected against
// cross-site request forgery; without it no form is rendered and every
// POST is refused with 403 Forbidden. A GET never changes anything.
//
// Everything read from the table (payloads, error texts, event types,
// handler keys) is escaped. Every response carries a Content-Security-Policy
// that allows no inline script and no framing.
//
// The handler renders links relative to the request's path, so it can be
// mounted under a prefix with [http.StripPrefix].
package dashboard

import (
	"log/slog"
	"time"
)

// Options configure the dashboard.
type Options struct {
	// Actions enables the pages' actions (replay, discard, pause, resume);
	// without it the dashboard is read-only.
	Actions bool
	// Actor is recorded as who acted, in replayed rows' history and
	// discarded rows' errors; "" means [DefaultActor].
	Actor string
	// Refresh is how often pages refresh themselves; 0 means 5 seconds
	// ([DefaultRefresh]), a negative value never. It is rounded to whole
	// seconds and must be at least one.
	Refresh time.Duration
	// Logger receives the dashboard's logs; nil means slog.Default().
	Logger *slog.Logger
	// TrustedOrigins are origins ("https://ops.example.com") besides the
	// dashboard's own from which browsers may send actions, as when a
	// proxy in front of it rewrites the Host header.
	TrustedOrigins []string
}

// DefaultRefresh is how often pages refresh themselves when
// [Options].Refresh is 0.
const DefaultRefresh = 5 * time.Second

// DefaultActor is the actor recorded for actions when [Options].Actor is
// empty.
const DefaultActor = "dashboard"
