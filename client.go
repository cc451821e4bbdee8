package inbox

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Client stores records in the inbox. Get it from [Inbox.Client]; it is safe
// for concurrent use and works whether or not the Inbox is started, so a
// process may store events and leave processing to others.
type Client struct {
	pool    *pgxpool.Pool
	routes  *routes
	unknown UnknownEventTypes
	notify  bool
	logger  *slog.Logger
}

// Set stores records, one row per handler registered for each record's
// event type, in one statement: all rows are stored or none. A record whose
// (id, handler key) row exists already is a duplicate and is ignored; it is
// not an error. Once Set returns nil the records are durable and the
// message may be acknowledged to the broker.
//
// If Set returns an error (the database unreachable or restarting, ctx
// done), do not acknowledge the message: retry Set or let the broker
// redeliver. Retrying is always safe, even when the connection broke while
// the rows were committing: rows that did get stored are then ignored as
// duplicates.
//
// Set checks every record before writing anything. It fails with an error
// wrapping [ErrNoRecords] for no records, [ErrInvalidRecord] for a nil or
// malformed record, and [ErrUnknownEventType] for an event type with no
// handler (unless [SkipUnknown] is set).
func (c *Client) Set(ctx context.Context, records ...*Record) error {
	args, err := c.args(records)
	if err != nil || args == nil {
		return err
	}
	if _, err := c.pool.Exec(ctx, setSQL, args...); err != nil {
		return fmt.Errorf("inbox: set %d records: %w", len(records), err)
	}
	return nil
}

// SetTx is Set inside the caller's transaction: the rows commit or roll
// back with it, so an event can be stored atomically with the caller's own
// writes. Idle workers are woken when the transaction commits.
func (c *Client) SetTx(ctx context.Context, tx pgx.Tx, records ...*Record) error {
	if tx == nil {
		return ErrNilTx
	}
	args, err := c.args(records)
	if err != nil || args == nil {
		return err
	}
	if _, err := tx.Exec(ctx, setSQL, args...); err != nil {
		return fmt.Errorf("inbox: set %d records in transaction: %w", len(records), err)
	}
	return nil
}

// args validates records and returns the parameters of setSQL, or nil when
// every record was skipped.
func (c *Client) args(records []*Record) ([]any, error) {
	if len(records) == 0 {
		return nil, ErrNoRecords
	}
	// One row per (record, handler key). Binary uuids: uuid.UUID would
	// encode as text.
	var ids [][16]byte
	var rowKeys, types []string
	var payloads [][]byte
	var dates []time.Time
	var unknown map[string]int
	for i, r := range records {
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
		keys, ok := c.routes.keys[r.eventType]
		if !ok {
			if unknown == nil {
				unknown = make(map[string]int)
			}
			unknown[r.eventType]++
			continue
		}
		payload := r.payload
		if payload == nil {
			payload = []byte{}
		}
		for _, key := range keys {
			ids = append(ids, r.id)
			rowKeys = append(rowKeys, key)
			types = append(types, r.eventType)
			payloads = append(payloads, payload)
			dates = append(dates, r.eventDate)
		}
	}
	if len(unknown) > 0 {
		names := make([]string, 0, len(unknown))
		for t, n := range unknown {
			names = append(names, fmt.Sprintf("%q (%d)", t, n))
		}
		sort.Strings(names)
		if c.unknown == RejectUnknown {
			return nil, fmt.Errorf("%w: %s; nothing was stored. Register a handler with Registry.On, or pass WithUnknownEventTypes(SkipUnknown) to skip such records",
				ErrUnknownEventType, strings.Join(names, ", "))
		}
		c.logger.Debug("inbox: skipped records of unregistered event types", "event_types", strings.Join(names, ", "))
		if len(ids) == 0 {
			return nil, nil
		}
	}
	return []any{ids, rowKeys, types, payloads, dates, c.notify}, nil
}
