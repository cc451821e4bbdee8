-- Dead rows, newest first: the dead-letter views and lists. Built
-- CONCURRENTLY, so outside a transaction: Sets and workers go on while it
-- builds. A build that failed half-way leaves an invalid index behind; it
-- is dropped first.

-- +goose NO TRANSACTION
-- +goose Up
DROP INDEX CONCURRENTLY IF EXISTS inbox_records_dead_idx;
CREATE INDEX CONCURRENTLY inbox_records_dead_idx ON inbox_records (updated_at, event_id, handler_key)
    WHERE status = 'dead';

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS inbox_records_dead_idx;
