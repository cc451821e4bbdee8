package inbox

import (
	"bytes"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// MaxEventTypeLength is the longest event type or handler key accepted, in
// bytes.
const MaxEventTypeLength = 255

// MaxPayloadSize is the largest payload [NewRecord] accepts, in bytes.
// PostgreSQL's limit for one value is 1 GiB, and Set sends a payload once per
// handler of its event type; larger events belong in object storage, with a
// reference in the payload.
const MaxPayloadSize = 64 << 20

// Record is one received event, ready to be stored by [Client.Set]. Create it
// with [NewRecord]. A Record is immutable: NewRecord copies the payload, so
// the caller may reuse its buffer, and [Record.Payload] returns a copy. A
// Record may be stored by several Sets at once.
type Record struct {
	id        uuid.UUID
	eventType string
	payload   []byte
	eventDate time.Time
	trace     string
	order     string // ordering key, "" for none
}

// NewRecord validates and returns a record.
//
// id identifies the event: the inbox stores each (id, handler key) once, so
// a redelivered event with the same id is ignored. eventType selects the
// handlers registered with [Registry.On]. payload is the received body; it
// may be empty, and NewRecord keeps a copy of it. eventDate is when the event
// occurred; it defaults to now.
//
// The error wraps [ErrInvalidRecord] when id is [uuid.Nil], eventType is
// blank, longer than [MaxEventTypeLength] bytes or not valid UTF-8 text, the
// payload is larger than [MaxPayloadSize], or eventDate is the zero time or
// outside the years 1 to 9999.
func NewRecord(id uuid.UUID, eventType string, payload []byte, eventDate ...time.Time) (*Record, error) {
	if len(eventDate) > 1 {
		return nil, fmt.Errorf("%w: got %d event dates, want at most one", ErrInvalidRecord, len(eventDate))
	}
	date := time.Now()
	if len(eventDate) == 1 {
		date = eventDate[0]
		if date.IsZero() {
			return nil, fmt.Errorf("%w: event date is the zero time", ErrInvalidRecord)
		}
	}
	if len(payload) > MaxPayloadSize {
		return nil, fmt.Errorf("%w: payload is %d bytes, the limit is %d (MaxPayloadSize)", ErrInvalidRecord, len(payload), MaxPayloadSize)
	}
	r := &Record{id: id, eventType: eventType, payload: bytes.Clone(payload), eventDate: date}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// WithTraceContext returns a copy of the record carrying its own trace
// context, such as the W3C traceparent a broker message arrived with: Set
// stores it with the record's rows instead of the one its context's
// [Propagator] gives, so that each message of a batch keeps its own trace.
// Set rejects a record whose trace context is longer than
// [MaxTraceContextLength] bytes or not valid text ([ErrInvalidRecord]).
func (r *Record) WithTraceContext(traceContext string) *Record {
	if r == nil {
		return nil // Set reports the nil record
	}
	c := *r
	c.trace = traceContext
	return &c
}

// WithOrderingKey returns a copy of the record carrying an ordering key,
// such as an order, account or aggregate id. For each handler, the rows of
// records with the same ordering key run one at a time, in the order Set
// stored them (within one call, the order of its records), while rows of
// other keys run in parallel. Rows without a key run as soon as they are
// due. "" removes the key.
//
// A row that fails holds back its key's later rows until it succeeds or
// dies; a dead row keeps holding them back (the key is "parked") until it
// is replayed or skipped with [Admin.Replay] or [Admin.SkipParked], unless
// its handler has [HandlerMovesOnPastDead]. Set rejects a key that is
// blank, longer than [MaxEventTypeLength] bytes or not valid text.
func (r *Record) WithOrderingKey(key string) *Record {
	if r == nil {
		return nil // Set reports the nil record
	}
	c := *r
	c.order = key
	return &c
}

// OrderingKey returns the record's ordering key, "" for none.
func (r *Record) OrderingKey() string { return r.order }

// TraceContext returns the record's own trace context, "" for none.
func (r *Record) TraceContext() string { return r.trace }

// ID returns the event id.
func (r *Record) ID() uuid.UUID { return r.id }

// EventType returns the event type.
func (r *Record) EventType() string { return r.eventType }

// Payload returns a copy of the event body (nil if NewRecord got nil).
func (r *Record) Payload() []byte { return bytes.Clone(r.payload) }

// EventDate returns when the event occurred.
func (r *Record) EventDate() time.Time { return r.eventDate }

func (r *Record) validate() error {
	if r == nil {
		return fmt.Errorf("%w: record is nil", ErrInvalidRecord)
	}
	if r.id == uuid.Nil {
		return fmt.Errorf("%w: id is the nil UUID; give each event its own id", ErrInvalidRecord)
	}
	if err := validateName("event type", r.eventType); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidRecord, err)
	}
	if r.eventDate.IsZero() {
		return fmt.Errorf("%w: event %s has no event date; build records with NewRecord", ErrInvalidRecord, r.id)
	}
	if r.order != "" {
		if err := validateName("ordering key", r.order); err != nil {
			return fmt.Errorf("%w: event %s: %w", ErrInvalidRecord, r.id, err)
		}
	}
	if err := ValidateTraceContext(r.trace); err != nil {
		return fmt.Errorf("event %s: %w", r.id, err)
	}
	if y := r.eventDate.UTC().Year(); y < 1 || y > 9999 {
		return fmt.Errorf("%w: event %s: event date %s is outside the years 1 to 9999",
			ErrInvalidRecord, r.id, r.eventDate.UTC().Format(time.RFC3339Nano))
	}
	return nil
}

// validateName checks an event type or handler key.
func validateName(what, s string) error {
	switch {
	case strings.TrimSpace(s) == "":
		return fmt.Errorf("%s %q is blank", what, s)
	case len(s) > MaxEventTypeLength:
		return fmt.Errorf("%s is %d bytes long, the limit is %d", what, len(s), MaxEventTypeLength)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s %q is not valid UTF-8 text", what, s)
	case strings.ContainsRune(s, 0):
		return fmt.Errorf("%s %q contains a NUL byte, which PostgreSQL text cannot hold", what, s)
	}
	return nil
}

// RecordState is the stored state of one (event, handler) row, as returned
// by [Inbox.Lookup].
type RecordState struct {
	EventID    uuid.UUID `json:"event_id"`
	EventType  string    `json:"event_type"`
	HandlerKey string    `json:"handler_key"`
	Status     Status    `json:"status"`
	// Attempts counts the attempts started so far, including one that is
	// running or whose worker died. An attempt that ended with [RetryAfter]
	// or was handed back unstarted at Stop is not counted.
	Attempts int `json:"attempts"`
	// MaxAttempts is the most attempts the row gets, fixed when it was
	// stored: the handler's [HandlerMaxAttempts], else the storing Inbox's
	// [WithMaxRetryAttempt].
	MaxAttempts int `json:"max_attempts"`
	// LastError is the failure of the latest failed attempt, or "". It is
	// bounded to [MaxErrorLength] bytes: a longer text keeps its start and
	// its end around a marker saying how much was left out.
	LastError string `json:"last_error"`
	// PayloadErased reports that retention erased the payload
	// ([WithPayloadRetention]); the row stays for deduplication.
	PayloadErased bool      `json:"payload_erased"`
	EventDate     time.Time `json:"event_date"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	// NextAttemptAt is when the row is next due, for Null and Failed rows;
	// nil otherwise, and for a row that waits for its ordering key.
	NextAttemptAt *time.Time `json:"next_attempt_at"`
	// OrderingKey is the row's ordering key ([Record.WithOrderingKey]), ""
	// for none (and for a dead row that left its key's order).
	OrderingKey string `json:"ordering_key,omitempty"`
	// Waiting reports a pending row that waits for the rows before it of
	// its ordering key to finish.
	Waiting bool `json:"waiting,omitempty"`
	// ErrorType names the type of the last failure's root cause: the Go
	// type (such as "*net.OpError"), or the inbox's own failure (such as
	// "inbox.ErrHandlerTimeout"); "" before any failure.
	ErrorType string `json:"error_type"`
}
