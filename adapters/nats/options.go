package inboxnats

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pginbox/inbox"
)

// Defaults and limits of [Options].
const (
	// DefaultBatchSize is the most messages stored by one Set.
	DefaultBatchSize = 100
	// MaxBatchSize is the largest BatchSize accepted: JetStream's default
	// limit of unacknowledged messages per consumer (MaxAckPending).
	MaxBatchSize = 1000
	// DefaultFetchWait is how long an idle fetch waits for a message.
	DefaultFetchWait = 2 * time.Second
	// MinFetchWait is the shortest FetchWait accepted.
	MinFetchWait = 100 * time.Millisecond
	// DefaultAckWait is how long JetStream waits for the ack of a
	// delivered message before delivering it again.
	DefaultAckWait = 30 * time.Second
	// MinAckWait is the shortest AckWait accepted. It must also be longer
	// than FetchWait.
	MinAckWait = time.Second
	// DefaultRetryBackoff is the first pause after a failed Set.
	DefaultRetryBackoff = 100 * time.Millisecond
	// DefaultMaxRetryBackoff caps the pause after failed Sets, which
	// doubles with each failure in a row.
	DefaultMaxRetryBackoff = 30 * time.Second
	// TraceHeader is the header whose value becomes a record's trace
	// context (W3C trace context).
	TraceHeader = "traceparent"
	// maxReason bounds the reason given to TermWithReason.
	maxReason = 512
)

// Options configure a [Consumer]. Stream and Durable are required; every
// other field has a default.
type Options struct {
	// Stream is the JetStream stream to consume.
	Stream string
	// Durable names the durable pull consumer, created by New or updated
	// to these options if it exists (a new one starts at the stream's
	// first message). Several processes running a Consumer with the same
	// Durable share its messages.
	Durable string
	// FilterSubjects limits the consumer to these subjects (wildcards
	// allowed); none means every subject of the stream. More than one
	// needs nats-server 2.10 or later.
	FilterSubjects []string
	// BatchSize is the most messages fetched and stored by one Set: 1 to
	// MaxBatchSize, default DefaultBatchSize.
	BatchSize int
	// FetchWait is how long a fetch waits for a message when the stream
	// has none: at least MinFetchWait, default DefaultFetchWait. Run
	// notices that its context ended within about this long.
	FetchWait time.Duration
	// AckWait is the consumer's ack wait: at least MinAckWait and longer
	// than FetchWait, default DefaultAckWait. Make it longer than a Set of
	// a batch under load (see the package documentation).
	AckWait time.Duration
	// IDHeader names a header holding the event id as a UUID (such as
	// Nats-Msg-Id when producers set it to one). A message whose header is
	// not a UUID is terminated; one without the header gets the id from
	// its stream sequence. Not with IDOf.
	IDHeader string
	// IDOf, when set, gives each message's event id. An error, or
	// uuid.Nil, terminates the message. Not with IDHeader.
	IDOf func(jetstream.Msg) (uuid.UUID, error)
	// TypeOf, when set, gives each message's event type; an error
	// terminates the message. Not with TypeHeader or Types.
	TypeOf func(jetstream.Msg) (string, error)
	// TypeHeader names a header holding the event type. A message without
	// it falls back to Types or the subject.
	TypeHeader string
	// Types maps subjects to event types. When set, a message whose
	// subject it does not map (and whose TypeHeader is absent) is
	// terminated. Without Types the subject is the event type.
	Types map[string]string
	// RetryBackoff is the pause after a failed Set, doubled with each
	// failure in a row up to MaxRetryBackoff. Defaults DefaultRetryBackoff
	// and DefaultMaxRetryBackoff; 0 < RetryBackoff <= MaxRetryBackoff.
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// Logger receives the consumer's logs; default slog.Default().
	Logger *slog.Logger
}

// withDefaults returns o with its defaults applied, or an error wrapping
// inbox.ErrInvalidConfig naming the first bad field.
func (o Options) withDefaults() (Options, error) {
	bad := func(format string, args ...any) (Options, error) {
		return o, fmt.Errorf("%w: inboxnats: "+format, append([]any{inbox.ErrInvalidConfig}, args...)...)
	}
	if o.BatchSize == 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.FetchWait == 0 {
		o.FetchWait = DefaultFetchWait
	}
	if o.AckWait == 0 {
		o.AckWait = DefaultAckWait
	}
	if o.RetryBackoff == 0 {
		o.RetryBackoff = DefaultRetryBackoff
	}
	if o.MaxRetryBackoff == 0 {
		o.MaxRetryBackoff = max(DefaultMaxRetryBackoff, o.RetryBackoff)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case !validName(o.Stream):
		return bad("Stream %q is empty or holds a space, '.', '*', '>', '/' or '\\'", o.Stream)
	case !validName(o.Durable):
		return bad("Durable %q is empty or holds a space, '.', '*', '>', '/' or '\\'", o.Durable)
	case o.BatchSize < 1 || o.BatchSize > MaxBatchSize:
		return bad("BatchSize %d is outside 1 to %d", o.BatchSize, MaxBatchSize)
	case o.FetchWait < MinFetchWait:
		return bad("FetchWait %v is shorter than %v", o.FetchWait, MinFetchWait)
	case o.AckWait < MinAckWait:
		return bad("AckWait %v is shorter than %v", o.AckWait, MinAckWait)
	case o.AckWait <= o.FetchWait:
		return bad("AckWait %v is not longer than FetchWait %v: messages would be redelivered while a fetch collects them", o.AckWait, o.FetchWait)
	case o.RetryBackoff < 0 || o.MaxRetryBackoff < o.RetryBackoff:
		return bad("RetryBackoff %v and MaxRetryBackoff %v: want 0 < RetryBackoff <= MaxRetryBackoff", o.RetryBackoff, o.MaxRetryBackoff)
	case o.IDHeader != "" && o.IDOf != nil:
		return bad("IDHeader and IDOf are both set; choose one")
	case o.TypeOf != nil && (o.TypeHeader != "" || o.Types != nil):
		return bad("TypeOf is set with TypeHeader or Types; choose one")
	}
	for i, s := range o.FilterSubjects {
		if s == "" || strings.ContainsAny(s, " \t\r\n") {
			return bad("FilterSubjects[%d] %q is empty or holds white space", i, s)
		}
	}
	for subject, eventType := range o.Types {
		if strings.TrimSpace(eventType) == "" || len(eventType) > inbox.MaxEventTypeLength {
			return bad("Types[%q] = %q is blank or longer than %d bytes", subject, eventType, inbox.MaxEventTypeLength)
		}
	}
	return o, nil
}

// validName reports whether s can name a stream or consumer.
func validName(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n.*>/\\")
}
