-- Finds the dead rows whose callback is still owed. Built CONCURRENTLY, so
-- outside a transaction: Sets and workers go on while it builds. A build
-- that failed half-way leaves an invalid index behind; it is dropped first.

-- +goose NO TRANSACTION
-- +goose Up
DROP INDEX CONCURRENTLY IF EXISTS inbox_records_dead_callback_idx;
CREATE INDEX CONCURRENTLY inbox_records_dead_callback_idx ON inbox_records (dead_callback_by)
    WHERE dead_callback_by IS NOT NULL;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS inbox_records_dead_callback_idx;
