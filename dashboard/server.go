package dashboard

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/pginbox/inbox"
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// pageTimeout bounds the database work of one page; actions are bounded
// by the request only, as a bulk replay may take long.
const pageTimeout = 30 * time.Second

// maxFormBytes bounds the body of an action's POST.
const maxFormBytes = 64 << 10

// contentSecurityPolicy allows the dashboard's own style sheet, script and
// icon, forms posted to itself, and nothing else: no inline script or
// style, no framing.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// pageNames are the templates in templates/, each rendered inside
// layout.html.
var pageNames = []string{"overview", "dead", "rows", "event", "workers", "pauses", "error"}

type server struct {
	admin   *inbox.Admin
	actions bool
	actor   string
	refresh int // seconds; 0: never
	log     *slog.Logger
	csrf    *csrf
	origins *http.CrossOriginProtection
	pages   map[string]*template.Template
	mux     *http.ServeMux
}

// New returns the dashboard's handler. It checks opts and parses the
// templates; it does not touch the database.
func New(admin *inbox.Admin, opts Options) (http.Handler, error) {
	if admin == nil {
		return nil, errors.New("dashboard: admin is nil")
	}
	s := &server{admin: admin, actions: opts.Actions, actor: opts.Actor, log: opts.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	if strings.TrimSpace(s.actor) == "" {
		s.actor = DefaultActor
	}
	if !utf8.ValidString(s.actor) || strings.ContainsRune(s.actor, 0) || len(s.actor) > inbox.MaxErrorLength {
		return nil, fmt.Errorf("dashboard: actor must be valid UTF-8 text without NUL bytes of at most %d bytes", inbox.MaxErrorLength)
	}
	switch r := opts.Refresh; {
	case r == 0:
		s.refresh = int(DefaultRefresh / time.Second)
	case r < 0:
		s.refresh = 0
	case r < time.Second:
		return nil, fmt.Errorf("dashboard: refresh %v is under a second; use 0 for the default (%v) or a negative value for none", r, DefaultRefresh)
	default:
		s.refresh = int(r.Round(time.Second) / time.Second)
	}
	s.origins = http.NewCrossOriginProtection()
	for _, o := range opts.TrustedOrigins {
		if err := s.origins.AddTrustedOrigin(o); err != nil {
			return nil, fmt.Errorf("dashboard: trusted origin: %w", err)
		}
	}
	var err error
	if s.csrf, err = newCSRF(); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	if s.pages, err = parsePages(); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	s.routes()
	return s, nil
}

func parsePages() (map[string]*template.Template, error) {
	pages := make(map[string]*template.Template, len(pageNames))
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFiles, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("parse template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

func (s *server) routes() {
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embedded directory is there: go:embed checked it
	}
	files := http.StripPrefix("/static/", http.FileServerFS(static))
	s.mux = http.NewServeMux()
	s.mux.Handle("GET /static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		files.ServeHTTP(w, r)
	}))
	s.mux.Handle("GET /{$}", s.page(s.overview))
	s.mux.Handle("GET /dead", s.page(s.dead))
	s.mux.Handle("GET /rows", s.page(s.rows))
	s.mux.Handle("GET /event", s.page(s.search))
	s.mux.Handle("GET /events/{id}", s.page(s.event))
	s.mux.Handle("GET /workers", s.page(s.workers))
	s.mux.Handle("GET /pauses", s.page(s.pauses))
	s.mux.Handle("POST /dead/replay", s.action(s.replayGroup))
	s.mux.Handle("POST /dead/discard", s.action(s.discardGroup))
	s.mux.Handle("POST /rows/replay", s.action(s.replayRow))
	s.mux.Handle("POST /pauses/pause", s.action(s.pause))
	s.mux.Handle("POST /pauses/resume", s.action(s.resume))
	s.mux.Handle("/", s.page(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return &httpError{status: http.StatusMethodNotAllowed, msg: r.Method + " is not allowed here."}
		}
		return &httpError{status: http.StatusNotFound, msg: "There is no page at " + r.URL.Path + "."}
	}))
}

// ServeHTTP sets the security headers, refuses what a read-only dashboard
// or a cross-origin request may not do, and routes the request.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if !s.actions {
			s.fail(w, r, &httpError{status: http.StatusForbidden,
				msg: "This dashboard is read-only: it was started without actions, so it changes nothing."})
			return
		}
		if err := s.origins.Check(r); err != nil {
			s.fail(w, r, &httpError{status: http.StatusForbidden,
				msg: "Refused: the request came from another site (" + err.Error() + ")."})
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

// page adapts a page handler: its error renders the error page. The
// request's context is bounded by pageTimeout.
func (s *server) page(h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		if err := h(w, r); err != nil {
			s.fail(w, r, err)
		}
	})
}

// action adapts an action handler: it checks the CSRF token before
// anything else, and its error renders the error page.
func (s *server) action(h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		if err := r.ParseForm(); err != nil {
			s.fail(w, r, &httpError{status: http.StatusBadRequest, msg: "The form could not be read: " + err.Error()})
			return
		}
		if err := s.csrf.check(r); err != nil {
			s.fail(w, r, &httpError{status: http.StatusForbidden, msg: err.Error()})
			return
		}
		for name, vs := range r.PostForm {
			for _, v := range vs {
				if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
					s.fail(w, r, badRequest("The form's field %q is not valid UTF-8 text without NUL bytes.", name))
					return
				}
			}
		}
		if err := h(w, r); err != nil {
			s.fail(w, r, err)
		}
	})
}

// httpError is an error with the status and the message to show.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

// badRequest is an error for bad input: 400 with msg.
func badRequest(format string, args ...any) error {
	return &httpError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// errorPage is the data of the error page.
type errorPage struct {
	Status  int
	Heading string
	Message string
	// Hint says what to do, when known (the schema is missing).
	Hint string
}

// fail renders the error page for err: 400 for bad input, 404 for what is
// not stored, 500 (logged) for the rest, as a database error.
func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	e := errorPage{Message: err.Error()}
	switch {
	case errors.As(err, &he):
		e.Status = he.status
	case errors.Is(err, inbox.ErrInvalidFilter):
		e.Status = http.StatusBadRequest
	case errors.Is(err, inbox.ErrNotFound):
		e.Status = http.StatusNotFound
	case errors.Is(r.Context().Err(), context.Canceled):
		s.log.Debug("dashboard: request cancelled", "method", r.Method, "path", r.URL.Path, "err", err)
		return // the client went away
	default:
		e.Status = http.StatusInternalServerError
		s.log.Error("dashboard: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
		if serr := s.admin.CheckSchema(ctx); serr != nil && errors.Is(serr, inbox.ErrSchema) {
			e.Hint = serr.Error()
		}
		cancel()
	}
	switch e.Status {
	case http.StatusBadRequest:
		e.Heading = "Bad request"
	case http.StatusForbidden:
		e.Heading = "Forbidden"
	case http.StatusNotFound:
		e.Heading = "Not found"
	case http.StatusMethodNotAllowed:
		e.Heading = "Method not allowed"
	default:
		e.Heading = "The inbox's database returned an error"
	}
	p := s.newPage(w, r, "error", e.Heading, "")
	p.Data = e
	// A database error may pass: its page refreshes, unless it answers a
	// POST, which a reload would send again.
	if e.Status != http.StatusInternalServerError || r.Method != http.MethodGet {
		p.Refresh = 0
	}
	s.render(w, r, e.Status, p)
}

// page is what the layout renders around each page's content.
type page struct {
	Name    string // the template
	Title   string
	Nav     string // the navigation entry to highlight
	Base    string // the dashboard's root, relative to the request's path
	Back    string // the request's page, relative to the root: where actions return
	Actions bool
	CSRF    string // the token for the action forms; "" when read-only
	Flash   *flash
	Refresh int // seconds; 0: never
	Now     time.Time
	Data    any
}

// newPage returns the common part of a page; it takes the flash message,
// if any, and sets the CSRF cookie when actions are on.
func (s *server) newPage(w http.ResponseWriter, r *http.Request, name, title, nav string) *page {
	p := &page{
		Name: name, Title: title, Nav: nav, Base: basePath(r.URL.Path), Back: backPath(r),
		Actions: s.actions, Refresh: s.refresh, Now: time.Now(),
	}
	p.Flash = s.csrf.takeFlash(w, r)
	if s.actions {
		p.CSRF = s.csrf.token(w, r)
	}
	return p
}

// render renders p with status, to a buffer first so that a template
// error is a clean 500.
func (s *server) render(w http.ResponseWriter, r *http.Request, status int, p *page) {
	var buf bytes.Buffer
	if err := s.pages[p.Name].ExecuteTemplate(&buf, "layout", p); err != nil {
		s.log.Error("dashboard: render failed", "page", p.Name, "path", r.URL.Path, "err", err)
		http.Error(w, "dashboard: the page could not be rendered; see the server's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(buf.Bytes())
	}
}

// basePath returns the dashboard's root relative to path: "./" for pages
// at the root ("/dead"), "../" one level down ("/events/ID").
func basePath(path string) string {
	depth := strings.Count(path, "/") - 1
	if depth <= 0 {
		return "./"
	}
	return strings.Repeat("../", depth)
}

// backPath returns the request's page and query relative to the root.
func backPath(r *http.Request) string {
	b := strings.TrimPrefix(r.URL.Path, "/")
	if r.URL.RawQuery != "" {
		b += "?" + r.URL.RawQuery
	}
	return b
}

// redirect answers 303 See Other to target, a page relative to the
// dashboard's root ("dead?event_type=x"). The Location is relative to the
// request, so it stays right under a prefix.
func redirect(w http.ResponseWriter, r *http.Request, target string) {
	w.Header().Set("Location", basePath(r.URL.Path)+target)
	w.WriteHeader(http.StatusSeeOther)
}
