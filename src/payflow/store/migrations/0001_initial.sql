-- PayFlow's store, version 1. Applied by payflow.store.migrate in one transaction.
--
-- Times are text in the models' fixed format (ISO-8601 UTC with milliseconds and a Z), which
-- sorts correctly as text; COLLATE "C" makes that a plain byte comparison whatever the
-- database's collation. `seq` gives the creation order (cursor pagination: newest first).
-- JSON fields are `json` (the text as written: key order kept, cheaper to write than jsonb;
-- nothing queries inside them). There are no foreign keys: the protocol deletes payments and
-- nothing else, and events and attempts outlive what they describe until pruned.

CREATE TABLE payments (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    id text PRIMARY KEY,
    method text NOT NULL,
    amount bigint,
    currency text,
    method_details json NOT NULL,
    status text NOT NULL,
    metadata json NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    updated_at text COLLATE "C" NOT NULL,
    failure_code text,
    failure_message text,
    sequence integer NOT NULL,
    amount_refunded bigint NOT NULL DEFAULT 0,
    -- the sum of this payment's pending refunds (kept by reserve/complete/delete refund), so
    -- that reserving a refund is one compare-and-set UPDATE
    amount_reserved bigint NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX payments_seq ON payments (seq);
CREATE INDEX payments_status_seq ON payments (status, seq);
CREATE INDEX payments_created_at ON payments (created_at);
CREATE INDEX payments_pending_updated_at ON payments (updated_at, seq) WHERE status = 'pending';

CREATE TABLE refunds (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    id text PRIMARY KEY,
    payment_id text NOT NULL,
    amount bigint NOT NULL,
    currency text,
    status text NOT NULL,
    failure_code text,
    failure_message text,
    created_at text COLLATE "C" NOT NULL,
    updated_at text COLLATE "C" NOT NULL
);
CREATE INDEX refunds_payment_id ON refunds (payment_id, seq);
CREATE INDEX refunds_pending ON refunds (updated_at) WHERE status = 'pending';

CREATE TABLE events (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    id text PRIMARY KEY,
    type text NOT NULL,
    timestamp text COLLATE "C" NOT NULL,
    data json NOT NULL,
    recorded_at text COLLATE "C" NOT NULL,  -- when the store recorded it (the outbox's clock)
    enqueued boolean NOT NULL DEFAULT false  -- its webhook job is in Redis (the outbox)
);
CREATE UNIQUE INDEX events_seq ON events (seq);
CREATE INDEX events_type_seq ON events (type, seq);
CREATE INDEX events_timestamp ON events (timestamp);
CREATE INDEX events_unqueued ON events (seq) WHERE NOT enqueued;

CREATE TABLE webhook_endpoints (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    id text PRIMARY KEY,
    url text NOT NULL,
    -- [{"secret": plain} or {"sealed": "v1:…"}, each with "expires_at"]: see store/sealing.py
    secrets json NOT NULL,
    enabled_events text[] NOT NULL,
    disabled boolean NOT NULL,
    disabled_reason text,
    description text NOT NULL,
    source text NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    updated_at text COLLATE "C" NOT NULL,
    failing_since text COLLATE "C"
);

CREATE TABLE delivery_attempts (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    id text PRIMARY KEY,
    event_id text NOT NULL,
    endpoint_id text NOT NULL,
    attempt integer NOT NULL,
    outcome text NOT NULL,
    at text COLLATE "C" NOT NULL,
    status integer,
    error text,
    latency_ms double precision NOT NULL,
    response_body text NOT NULL,
    next_retry_at text COLLATE "C"
);
CREATE INDEX delivery_attempts_event_id ON delivery_attempts (event_id, seq);
CREATE INDEX delivery_attempts_endpoint_at ON delivery_attempts (endpoint_id, at);
CREATE INDEX delivery_attempts_at ON delivery_attempts (at);

-- Idempotency-Key of a POST /v1/payments, bound to its payment before the job is queued.
CREATE TABLE idempotency_keys (
    key text PRIMARY KEY,
    payment_id text NOT NULL,
    fingerprint text NOT NULL,
    confirmed boolean NOT NULL DEFAULT false,  -- its request was answered
    created_at text COLLATE "C" NOT NULL
);
CREATE INDEX idempotency_keys_payment_id ON idempotency_keys (payment_id);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- Values generated once per deployment (e.g. the card fingerprint key).
CREATE TABLE settings (
    name text PRIMARY KEY,
    value text NOT NULL
);
