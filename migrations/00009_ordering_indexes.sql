-- The indexes of ordered processing and of global concurrency limits,
-- built CONCURRENTLY (outside a transaction: Sets and workers go on while
-- they build). A build that failed half-way leaves an invalid index
-- behind; it is dropped first.
--
-- inbox_records_order_idx holds the unfinished rows of each (handler key,
-- ordering key), and its dead rows that block it, in order: the claim
-- checks that a row is its key's first, and a finished row finds the next.
-- Rows without an ordering key are not in it.
--
-- inbox_records_progress_idx holds the rows in progress, by handler key:
-- a claim of a handler with a global concurrency limit counts them.

-- +goose NO TRANSACTION
-- +goose Up
DROP INDEX CONCURRENTLY IF EXISTS inbox_records_order_idx;
CREATE INDEX CONCURRENTLY inbox_records_order_idx ON inbox_records (handler_key, ordering_key, seq)
    WHERE ordering_key IS NOT NULL AND status <> 'done';
DROP INDEX CONCURRENTLY IF EXISTS inbox_records_progress_idx;
CREATE INDEX CONCURRENTLY inbox_records_progress_idx ON inbox_records (handler_key)
    WHERE status = 'progress';

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS inbox_records_progress_idx;
DROP INDEX CONCURRENTLY IF EXISTS inbox_records_order_idx;
