-- A delivery whose first attempt succeeded before it was logged (most of them) keeps
-- that attempt in its own row instead of a row of webhook_attempts: one B-tree insert
-- fewer per delivery for the log's one writer. first_started_at = 0 means the first
-- attempt, if any, is a row of webhook_attempts as before.
ALTER TABLE webhook_deliveries ADD COLUMN first_started_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE webhook_deliveries ADD COLUMN first_duration_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE webhook_deliveries ADD COLUMN first_status_code BIGINT NOT NULL DEFAULT 0;
ALTER TABLE webhook_deliveries ADD COLUMN first_response_body TEXT NOT NULL DEFAULT '';
