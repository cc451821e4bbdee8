package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Handler processes the events of one event type. Each handler registered
// for an event type gets its own row per event, with its own status and
// attempts, so handlers succeed and fail independently.
//
// A handler may also implement [TxHandler], to run inside the transaction
// that marks its row done, and Timeout() time.Duration, to override the
// Inbox's handler timeout. Both are looked up once, when the handler is
// registered. Settings given at registration with [Registry.Handle] take
// precedence over the Timeout method.
type Handler interface {
	// Key identifies the handler within its event type. It must be unique
	// per event type, not blank, and stable across deploys: stored rows
	// refer to it.
	Key() string
	// Process handles one event. A nil error marks the row done; any other
	// error (or a panic, or running past the timeout) fails the attempt.
	// The context ends at the handler's timeout or when the worker loses
	// the row's lease.
	Process(ctx context.Context, payload []byte) error
}

// TxHandler is a Handler whose work is writes to the inbox's own database.
// The worker calls ProcessTx, not Process, inside a transaction that also
// marks the row done: the handler's writes and the row's completion commit
// together or not at all, so the writes take effect exactly once. A failed,
// timed-out or panicking ProcessTx rolls its writes back and is retried.
// ProcessTx must not commit or roll back tx: the inbox does, and reports a
// handler that did with [ErrTxControl].
type TxHandler interface {
	Handler
	ProcessTx(ctx context.Context, tx pgx.Tx, payload []byte) error
}

// HandlerFunc returns a Handler with the given key that calls fn.
func HandlerFunc(key string, fn func(ctx context.Context, payload []byte) error) Handler {
	return funcHandler{key: key, fn: fn}
}

type funcHandler struct {
	key string
	fn  func(ctx context.Context, payload []byte) error
}

// Key returns the handler's key.
func (h funcHandler) Key() string { return h.key }

// Process calls the handler's function.
func (h funcHandler) Process(ctx context.Context, payload []byte) error {
	return h.fn(ctx, payload)
}

// TxHandlerFunc returns a [TxHandler] with the given key that calls fn
// inside the transaction that marks its row done.
func TxHandlerFunc(key string, fn func(ctx context.Context, tx pgx.Tx, payload []byte) error) TxHandler {
	return txFuncHandler{key: key, fn: fn}
}

type txFuncHandler struct {
	key string
	fn  func(ctx context.Context, tx pgx.Tx, payload []byte) error
}

// Key returns the handler's key.
func (h txFuncHandler) Key() string { return h.key }

// Process is never called by the worker for a TxHandler; it reports misuse.
func (h txFuncHandler) Process(context.Context, []byte) error {
	return fmt.Errorf("handler %q runs only inside a transaction: the worker calls ProcessTx", h.key)
}

// ProcessTx calls the handler's function inside the worker's transaction.
func (h txFuncHandler) ProcessTx(ctx context.Context, tx pgx.Tx, payload []byte) error {
	return h.fn(ctx, tx, payload)
}

type timeouter interface{ Timeout() time.Duration }

// Registry maps event types to their handlers. Fill it with [Registry.On]
// or [Registry.Handle] before passing it to [New]; New copies it, so later
// changes do not affect a running Inbox. A Registry is safe for concurrent
// use.
type Registry struct {
	mu       sync.Mutex
	handlers map[string][]registration
	errs     []error
}

// registration is one handler of an event type with its own settings.
type registration struct {
	h   Handler
	cfg handlerConfig
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry {
	return &Registry{handlers: make(map[string][]registration)}
}

// On registers handlers for an event type. Every handler registered for a
// type runs for each event of that type, each with its own row and status.
// They get the Inbox's settings; use [Registry.Handle] to give one its own.
//
// For example, On("order_created", reserve, notify) stores two rows for each
// order_created event, one per handler key, and runs both handlers.
//
// On records, rather than ignores, every mistake: a blank event type, no
// handlers, a nil handler, a HandlerFunc or TxHandlerFunc with a nil
// function, a blank key, or a key already registered for the event type.
// [New] then rejects the registry with an error wrapping
// [ErrInvalidRegistry] that lists them.
func (r *Registry) On(eventType string, handlers ...Handler) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := validateName("event type", eventType); err != nil {
		r.errs = append(r.errs, err)
		return
	}
	if len(handlers) == 0 {
		r.errs = append(r.errs, fmt.Errorf("event type %q registered with no handler", eventType))
		return
	}
	for i, h := range handlers {
		r.add(eventType, i, h, nil)
	}
}

// Handle registers one handler for an event type with settings of its own,
// which override the Inbox's for this handler only: for example
//
//	registry.Handle("order_created", reserve,
//		inbox.HandlerTimeout(30*time.Second),
//		inbox.HandlerMaxAttempts(10),
//		inbox.HandlerConcurrency(5))
//
// The settings belong to the registration, not to the handler value, so
// wrapping a handler loses none of them. Handle records mistakes as
// [Registry.On] does, and also every [HandlerOption] with a bad value.
func (r *Registry) Handle(eventType string, h Handler, opts ...HandlerOption) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := validateName("event type", eventType); err != nil {
		r.errs = append(r.errs, err)
		return
	}
	r.add(eventType, 0, h, opts)
}

// add registers h (the i-th handler of the call) for eventType.
func (r *Registry) add(eventType string, i int, h Handler, opts []HandlerOption) {
	if r.handlers == nil {
		r.handlers = make(map[string][]registration)
	}
	if h == nil {
		r.errs = append(r.errs, fmt.Errorf("event type %q: handler %d is nil", eventType, i))
		return
	}
	key := h.Key()
	if err := validateName("handler key", key); err != nil {
		r.errs = append(r.errs, fmt.Errorf("event type %q: %w", eventType, err))
		return
	}
	if nilFunc(h) {
		r.errs = append(r.errs, fmt.Errorf("event type %q: handler %q has a nil function", eventType, key))
		return
	}
	var cfg handlerConfig
	if t, ok := h.(timeouter); ok {
		if t.Timeout() <= 0 {
			r.errs = append(r.errs, fmt.Errorf("event type %q: handler %q: Timeout() is %v, must be positive", eventType, key, t.Timeout()))
			return
		}
		cfg.timeout = t.Timeout()
	}
	for j, opt := range opts {
		if opt == nil {
			r.errs = append(r.errs, fmt.Errorf("event type %q: handler %q: option %d is nil", eventType, key, j))
			return
		}
		if err := opt(&cfg); err != nil {
			r.errs = append(r.errs, fmt.Errorf("event type %q: handler %q: %w", eventType, key, err))
			return
		}
	}
	if r.has(eventType, key) {
		r.errs = append(r.errs, fmt.Errorf("event type %q: handler key %q registered twice; keys must be unique per event type", eventType, key))
		return
	}
	r.handlers[eventType] = append(r.handlers[eventType], registration{h: h, cfg: cfg})
}

// nilFunc reports a HandlerFunc or TxHandlerFunc made with a nil function.
func nilFunc(h Handler) bool {
	switch f := h.(type) {
	case funcHandler:
		return f.fn == nil
	case txFuncHandler:
		return f.fn == nil
	}
	return false
}

func (r *Registry) has(eventType, key string) bool {
	for _, reg := range r.handlers[eventType] {
		if reg.h.Key() == key {
			return true
		}
	}
	return false
}

// Handlers returns a copy of the registrations: event type to its handlers,
// in registration order.
func (r *Registry) Handlers() map[string][]Handler {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]Handler, len(r.handlers))
	for t, regs := range r.handlers {
		for _, reg := range regs {
			out[t] = append(out[t], reg.h)
		}
	}
	return out
}

// route is one registered (event type, handler key) pair with its settings
// resolved against the Inbox's.
type route struct {
	eventType, key string
	handler        Handler
	tx             TxHandler // the handler as registered, if transactional
	timeout        time.Duration
	maxAttempts    int
	backoffBase    time.Duration
	backoffMax     time.Duration
	// concurrency is the most runs at once in one Inbox; 0 for no limit of
	// its own.
	concurrency int
	// globalLimit is the most rows of the handler key in progress across
	// every Inbox ([HandlerGlobalConcurrency]); 0 for no limit.
	globalLimit int
	// movesOn: a dead row leaves its ordering key's order instead of
	// parking the key ([HandlerMovesOnPastDead]).
	movesOn bool
	// index is the route's position in routes.list.
	index int
}

// routes is the immutable snapshot of a registry that an Inbox uses.
type routes struct {
	// byType: event type to its routes, in registration order.
	byType map[string][]*route
	// byTypeKey: event type, then handler key, to its route.
	byTypeKey map[string]map[string]*route
	// list: every route, sorted by event type then registration order.
	list []*route
	// eventTypes: the registered event types, sorted.
	eventTypes []string
	// pairTypes and pairKeys are parallel to list, as passed to SQL.
	pairTypes, pairKeys []string
}

// snapshot resolves the registry against the Inbox's configuration.
func (r *Registry) snapshot(cfg *config) (*routes, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: registry is nil; build one with NewRegistry", ErrInvalidRegistry)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRegistry, errors.Join(r.errs...))
	}
	if len(r.handlers) == 0 {
		return nil, fmt.Errorf("%w: no handlers registered; call Registry.On before New", ErrInvalidRegistry)
	}
	rt := &routes{byType: make(map[string][]*route, len(r.handlers)), byTypeKey: make(map[string]map[string]*route)}
	for t := range r.handlers {
		rt.eventTypes = append(rt.eventTypes, t)
	}
	sort.Strings(rt.eventTypes)
	for _, t := range rt.eventTypes {
		for _, reg := range r.handlers[t] {
			ro := &route{
				eventType:   t,
				key:         reg.h.Key(),
				handler:     reg.h,
				timeout:     cmp.Or(reg.cfg.timeout, cfg.handlerTimeout),
				maxAttempts: cmp.Or(reg.cfg.maxAttempts, cfg.maxAttempts),
				backoffBase: cmp.Or(reg.cfg.backoffBase, cfg.backoffBase),
				backoffMax:  cmp.Or(reg.cfg.backoffMax, cfg.backoffMax),
				concurrency: reg.cfg.concurrency,
				globalLimit: reg.cfg.globalLimit,
				movesOn:     reg.cfg.movesOn,
				index:       len(rt.list),
			}
			ro.tx, _ = reg.h.(TxHandler)
			rt.byType[t] = append(rt.byType[t], ro)
			if rt.byTypeKey[t] == nil {
				rt.byTypeKey[t] = make(map[string]*route)
			}
			rt.byTypeKey[t][ro.key] = ro
			rt.list = append(rt.list, ro)
			rt.pairTypes = append(rt.pairTypes, t)
			rt.pairKeys = append(rt.pairKeys, ro.key)
		}
	}
	return rt, nil
}
