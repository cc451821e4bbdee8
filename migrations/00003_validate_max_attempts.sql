-- Validates the constraint 00002 added NOT VALID. In a transaction of its
-- own, VALIDATE takes only a SHARE UPDATE EXCLUSIVE lock: Sets and workers
-- go on while it scans the table.

-- +goose Up
ALTER TABLE inbox_records VALIDATE CONSTRAINT inbox_records_max_attempts_check;

-- +goose Down
SELECT 1;
