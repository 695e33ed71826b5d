-- The due and ordering indexes serve only the poll, which reads pending deliveries.
-- Most deliveries succeed at their first attempt and are logged already settled, so
-- indexing only pending rows spares each of them two index insertions (one at a random
-- place: the conversation key). Both SQLite and PostgreSQL use a partial index for a
-- query whose WHERE clause includes `status = 'pending'`.
DROP INDEX webhook_deliveries_due;
DROP INDEX webhook_deliveries_order;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint_id, ordering_key, seq)
    WHERE status = 'pending';
