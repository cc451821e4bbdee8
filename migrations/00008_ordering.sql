-- Ordered processing: a record may carry an ordering key. For each
-- (handler key, ordering key), rows run one at a time in the order of
-- their seq, drawn when Set stores them: (a value of inbox_order_seq,
-- drawn once per Set call) * 2^20 + the record's position in the call.
-- A row whose earlier rows of the same key are not finished waits with
-- due_at 'infinity', outside the claim's range of the due index, until
-- the row before it finishes and makes it due (the Go code: "promote").
--
-- Adding nullable columns without a default, a sequence and a constraint
-- NOT VALID is quick on a big table; the indexes come in the next
-- migration, built CONCURRENTLY.

-- +goose Up
SET LOCAL lock_timeout = '5s';
ALTER TABLE inbox_records
    -- NULL for rows without an ordering key (they run as soon as due),
    -- and for dead rows that left their key's order (skipped, or a handler
    -- that moves on past dead rows).
    ADD COLUMN ordering_key text,
    -- The row's place in its key's order; NULL without an ordering key.
    ADD COLUMN seq bigint;
ALTER TABLE inbox_records
    ADD CONSTRAINT inbox_records_ordering_key_check
        CHECK (btrim(ordering_key) <> '' AND octet_length(ordering_key) <= 255) NOT VALID;
CREATE SEQUENCE inbox_order_seq AS bigint;

-- +goose Down
-- Never run by the library; kept so an operator can undo it by hand.
DROP SEQUENCE inbox_order_seq;
ALTER TABLE inbox_records
    DROP CONSTRAINT inbox_records_ordering_key_check,
    DROP COLUMN seq,
    DROP COLUMN ordering_key;
