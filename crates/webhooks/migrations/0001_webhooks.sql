-- One schema for SQLite and PostgreSQL: portable types only. Times are Unix
-- milliseconds (BIGINT), flags are 0/1 (BIGINT), lists and maps are JSON text.

CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    events TEXT NOT NULL,
    filters TEXT NOT NULL,
    headers TEXT NOT NULL,
    rate_limit BIGINT NOT NULL,
    ordered BIGINT NOT NULL,
    enabled BIGINT NOT NULL,
    disabled_reason TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT NOT NULL,
    previous_secret_until BIGINT NOT NULL,
    failing_since BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant, created_at);

-- The body of each event, once, however many endpoints receive it.
CREATE TABLE webhook_messages (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One event to one endpoint. `id` is the `webhook-id` header, the same on every attempt.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    seq BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_status_code BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint_id, ordering_key, seq);

CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status_code BIGINT NOT NULL,
    error TEXT NOT NULL,
    response_body TEXT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
