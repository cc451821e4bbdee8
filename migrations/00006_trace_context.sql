-- The trace context of the code that stored each row (a W3C traceparent,
-- as a Propagator gives it), so that the handler's trace continues the
-- producer's. NULL without a Propagator. Adding a column without a default
-- does not rewrite the table.

-- +goose Up
SET LOCAL lock_timeout = '5s';
ALTER TABLE inbox_records ADD COLUMN trace_context text;

-- +goose Down
ALTER TABLE inbox_records DROP COLUMN trace_context;
