-- The index of ordered processing, built CONCURRENTLY (outside a
-- transaction: Sets and workers go on while it builds). A build that
-- failed half-way leaves an invalid index behind; it is dropped first.
--
-- inbox_records_order_idx holds the unfinished rows of each (handler key,
-- ordering key), and its dead rows that block it, in order: the claim
-- checks that a row is its key's first, and a finished row finds the next.
-- Rows without an ordering key are not in it.
--
-- (The index that claims of handlers with a global concurrency limit
-- count rows in progress through is built by the first Inbox that has such
-- a handler, not here: every claim and result write would pay for it.)

-- +goose NO TRANSACTION
-- +goose Up
DROP INDEX CONCURRENTLY IF EXISTS inbox_records_order_idx;
CREATE INDEX CONCURRENTLY inbox_records_order_idx ON inbox_records (handler_key, ordering_key, seq)
    WHERE ordering_key IS NOT NULL AND status <> 'done';

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS inbox_records_order_idx;
