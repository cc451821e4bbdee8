package inbox

import (
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
// A handler may also implement:
//
//   - Timeout() time.Duration, to override the inbox's handler timeout;
//   - [TxHandler], to run inside the transaction that marks its row done.
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
// ProcessTx must not commit or roll back tx.
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

// Registry maps event types to their handlers. Fill it with On before
// passing it to [New]; New copies it, so later changes do not affect a
// running Inbox. A Registry is safe for concurrent use.
type Registry struct {
	mu       sync.Mutex
	handlers map[string][]Handler
	errs     []error
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry {
	return &Registry{handlers: make(map[string][]Handler)}
}

// On registers handlers for an event type. Every handler registered for a
// type runs for each event of that type, each with its own row and status.
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
	if r.handlers == nil {
		r.handlers = make(map[string][]Handler)
	}
	if err := validateName("event type", eventType); err != nil {
		r.errs = append(r.errs, err)
		return
	}
	if len(handlers) == 0 {
		r.errs = append(r.errs, fmt.Errorf("event type %q registered with no handler", eventType))
		return
	}
	for i, h := range handlers {
		if h == nil {
			r.errs = append(r.errs, fmt.Errorf("event type %q: handler %d is nil", eventType, i))
			continue
		}
		key := h.Key()
		if err := validateName("handler key", key); err != nil {
			r.errs = append(r.errs, fmt.Errorf("event type %q: %w", eventType, err))
			continue
		}
		if nilFunc(h) {
			r.errs = append(r.errs, fmt.Errorf("event type %q: handler %q has a nil function", eventType, key))
			continue
		}
		if t, ok := h.(timeouter); ok && t.Timeout() <= 0 {
			r.errs = append(r.errs, fmt.Errorf("event type %q: handler %q: Timeout() is %v, must be positive", eventType, key, t.Timeout()))
			continue
		}
		if r.has(eventType, key) {
			r.errs = append(r.errs, fmt.Errorf("event type %q: handler key %q registered twice; keys must be unique per event type", eventType, key))
			continue
		}
		r.handlers[eventType] = append(r.handlers[eventType], h)
	}
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
	for _, h := range r.handlers[eventType] {
		if h.Key() == key {
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
	for t, hs := range r.handlers {
		out[t] = append([]Handler(nil), hs...)
	}
	return out
}

// routes is the immutable snapshot of a registry that an Inbox uses.
type routes struct {
	// keys: event type to its handler keys, in registration order.
	keys map[string][]string
	// handlers: (event type, handler key) to its handler.
	handlers map[[2]string]Handler
	// eventTypes: the registered event types, sorted.
	eventTypes []string
	// pairTypes and pairKeys are parallel: one entry per (event type,
	// handler key) pair, sorted by type, as passed to SQL.
	pairTypes, pairKeys []string
}

func (r *Registry) snapshot() (*routes, error) {
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
	rt := &routes{keys: make(map[string][]string, len(r.handlers)), handlers: make(map[[2]string]Handler)}
	for t := range r.handlers {
		rt.eventTypes = append(rt.eventTypes, t)
	}
	sort.Strings(rt.eventTypes)
	for _, t := range rt.eventTypes {
		for _, h := range r.handlers[t] {
			key := h.Key()
			rt.keys[t] = append(rt.keys[t], key)
			rt.handlers[[2]string{t, key}] = h
			rt.pairTypes = append(rt.pairTypes, t)
			rt.pairKeys = append(rt.pairKeys, key)
		}
	}
	return rt, nil
}
