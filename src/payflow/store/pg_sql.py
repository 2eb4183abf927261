"""The statements of the PostgreSQL store (see postgres.py for how they are used)."""

from __future__ import annotations

from payflow.store.pg_rows import ATTEMPT, ENDPOINT, EVENT, PAYMENT, REFUND, prefixed


def arrays(first: int, *types: str) -> str:
    """``$first::t1[], $first+1::t2[], …``."""
    return ", ".join(f"${first + n}::{t}[]" for n, t in enumerate(types))


def _insert_events(first: int) -> str:
    """Insert the events of the arrays ``$first…$first+3`` (id, type, timestamp, data),
    recorded at ``$first+4``; an event whose id is known is left as it is."""
    return (f"INSERT INTO events (id, type, timestamp, data, recorded_at) "
            f"SELECT e.id, e.type, e.timestamp, e.data::json, ${first + 4}::text "
            f"FROM unnest({arrays(first, 'text', 'text', 'text', 'text')}) WITH ORDINALITY "
            f"AS e(id, type, timestamp, data, ord) ORDER BY e.ord "
            f"ON CONFLICT (id) DO NOTHING")


class Query:
    """A SELECT with optional conditions, each with one argument (``{}`` in ``condition``),
    so that each combination of filters is its own prepared statement with its own plan."""

    def __init__(self) -> None:
        self.args: list[object] = []
        self._where: list[str] = []

    def where(self, condition: str, value: object) -> None:
        self.args.append(value)
        self._where.append(condition.format(f"${len(self.args)}"))

    def text(self, select: str, order: str, limit: int) -> str:
        self.args.append(limit)
        where = f" WHERE {' AND '.join(self._where)}" if self._where else ""
        return f"{select}{where} {order} LIMIT ${len(self.args)}"


CREATE_PAYMENTS = f"""
WITH inserted AS (
    INSERT INTO payments ({PAYMENT})
    SELECT t.id, t.method, t.amount, t.currency, t.method_details::json, t.status,
           t.metadata::json, t.created_at, t.updated_at, t.failure_code, t.failure_message,
           t.sequence, t.amount_refunded
    FROM unnest({arrays(1, 'text', 'text', 'bigint', 'text', 'text', 'text', 'text', 'text',
                        'text', 'text', 'text', 'int', 'bigint')}) WITH ORDINALITY
        AS t(id, method, amount, currency, method_details, status, metadata, created_at,
             updated_at, failure_code, failure_message, sequence, amount_refunded, ord)
    ORDER BY t.ord
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)
SELECT (SELECT array_agg(id) FROM inserted) AS inserted, known.*
FROM (SELECT 1) AS one
LEFT JOIN (SELECT {PAYMENT} FROM payments WHERE id = ANY($1::text[])) AS known ON true"""

GET_PAYMENTS = f"SELECT {PAYMENT} FROM payments WHERE id = ANY($1::text[])"

LOCK_PAYMENTS = f"SELECT {PAYMENT} FROM payments WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"

TRANSITION = f"""
WITH changed AS (
    UPDATE payments AS p
    SET status = t.status, updated_at = t.updated_at, sequence = t.sequence,
        failure_code = t.failure_code, failure_message = t.failure_message
    FROM unnest({arrays(1, 'text', 'text', 'text', 'int', 'text', 'text')})
        AS t(id, status, updated_at, sequence, failure_code, failure_message)
    WHERE p.id = t.id
)
{_insert_events(7)}"""

STALE_PENDING = f"""
SELECT {PAYMENT} FROM payments WHERE status = 'pending' AND updated_at < $1
ORDER BY updated_at, seq LIMIT $2"""

STALE_REFUNDS = f"""
SELECT {REFUND} FROM refunds WHERE status = 'pending' AND updated_at < $1
ORDER BY updated_at, seq LIMIT $2"""

RESERVE_REFUND = f"""
WITH reserved AS (
    UPDATE payments SET amount_reserved = amount_reserved + $3::bigint
    WHERE id = $2::text AND status = ANY($10::text[]) AND amount IS NOT NULL
      AND amount - amount_refunded - amount_reserved >= $3::bigint
    RETURNING id
), inserted AS (
    INSERT INTO refunds ({REFUND})
    SELECT $1::text, $2::text, $3::bigint, $4::text, $5::text, $6::text, $7::text, $8::text,
           $9::text
    FROM reserved
    RETURNING id
)
SELECT (SELECT count(*) FROM inserted) AS done, p.status, p.amount
FROM (SELECT 1) AS one LEFT JOIN payments AS p ON p.id = $2::text"""

REFUNDABLE = """
SELECT amount - amount_refunded - amount_reserved FROM payments
WHERE id = $1 AND amount IS NOT NULL"""

DELETE_REFUND = """
WITH gone AS (DELETE FROM refunds WHERE id = $1 RETURNING payment_id, amount, status)
UPDATE payments AS p SET amount_reserved = p.amount_reserved - gone.amount
FROM gone WHERE p.id = gone.payment_id AND gone.status = 'pending'"""

_LOCKED_PAYMENT = ", ".join(f"p.{c.strip()} AS p_{c.strip()}"
                            for c in (*PAYMENT.split(","), "amount_reserved"))
LOCK_REFUNDS = f"""
WITH r AS MATERIALIZED (
    SELECT {REFUND} FROM refunds WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
), p AS MATERIALIZED (
    SELECT {PAYMENT}, amount_reserved FROM payments
    WHERE id IN (SELECT payment_id FROM r) ORDER BY id FOR UPDATE
)
SELECT {prefixed(REFUND, 'r')}, {_LOCKED_PAYMENT} FROM r LEFT JOIN p ON p.id = r.payment_id"""

COMPLETE_REFUNDS = f"""
WITH done_refunds AS (
    UPDATE refunds AS r
    SET status = t.status, failure_code = t.failure_code, failure_message = t.failure_message,
        updated_at = t.updated_at
    FROM unnest({arrays(1, 'text', 'text', 'text', 'text', 'text')})
        AS t(id, status, failure_code, failure_message, updated_at)
    WHERE r.id = t.id
), done_payments AS (
    UPDATE payments AS p
    SET status = t.status, amount_refunded = t.amount_refunded,
        amount_reserved = t.amount_reserved, sequence = t.sequence, updated_at = t.updated_at
    FROM unnest({arrays(6, 'text', 'text', 'bigint', 'bigint', 'int', 'text')})
        AS t(id, status, amount_refunded, amount_reserved, sequence, updated_at)
    WHERE p.id = t.id
)
{_insert_events(12)}"""

ADD_EVENTS = _insert_events(1)

UNQUEUED_EVENTS = f"""
SELECT {EVENT} FROM events WHERE NOT enqueued AND recorded_at < $1 ORDER BY seq LIMIT $2"""

PUT_ENDPOINT = f"""
INSERT INTO webhook_endpoints ({ENDPOINT})
VALUES ($1, $2, $3::json, $4::text[], $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (id) DO UPDATE SET
    url = EXCLUDED.url, secrets = EXCLUDED.secrets, enabled_events = EXCLUDED.enabled_events,
    disabled = EXCLUDED.disabled, disabled_reason = EXCLUDED.disabled_reason,
    description = EXCLUDED.description, source = EXCLUDED.source,
    created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
    failing_since = EXCLUDED.failing_since"""

# Only the sealed secrets of one endpoint: opened at start, to refuse a missing or wrong key.
SOME_SEALED_ENDPOINT = f"""
SELECT {ENDPOINT} FROM webhook_endpoints WHERE strpos(secrets::text, '"sealed"') > 0 LIMIT 1"""

# An attempt whose event is gone (pruned) is dropped, as the memory store drops one whose
# event was evicted.
ADD_ATTEMPTS = f"""
INSERT INTO delivery_attempts ({ATTEMPT})
SELECT t.id, t.event_id, t.endpoint_id, t.attempt, t.outcome, t.at, t.status, t.error,
       t.latency_ms, t.response_body, t.next_retry_at
FROM unnest({arrays(1, 'text', 'text', 'text', 'int', 'text', 'text', 'int', 'text', 'float8',
                    'text', 'text')}) WITH ORDINALITY
    AS t(id, event_id, endpoint_id, attempt, outcome, at, status, error, latency_ms,
         response_body, next_retry_at, ord)
WHERE EXISTS (SELECT 1 FROM events AS e WHERE e.id = t.event_id)
ORDER BY t.ord
ON CONFLICT (id) DO NOTHING"""

ATTEMPTS_SINCE = f"""
SELECT {ATTEMPT} FROM delivery_attempts WHERE endpoint_id = $1 AND at >= $2 ORDER BY seq"""

# Enqueued events recorded before $1 with all their attempts, and every attempt before $1.
PRUNE = """
WITH gone_events AS (
    DELETE FROM events WHERE enqueued AND timestamp < $1 RETURNING id
), old_attempts AS (
    DELETE FROM delivery_attempts WHERE at < $1 RETURNING 1
), orphans AS (
    DELETE FROM delivery_attempts
    WHERE event_id = ANY(ARRAY(SELECT id FROM gone_events)) AND at >= $1 RETURNING 1
), old_keys AS (
    DELETE FROM idempotency_keys WHERE created_at < $1 RETURNING 1
)
SELECT (SELECT count(*) FROM gone_events) + (SELECT count(*) FROM old_attempts)
     + (SELECT count(*) FROM orphans) + (SELECT count(*) FROM old_keys)"""

BIND_KEY = """
INSERT INTO idempotency_keys (key, payment_id, fingerprint, created_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (key) DO NOTHING RETURNING payment_id"""

GET_BINDING = """
SELECT payment_id, fingerprint, confirmed, created_at FROM idempotency_keys WHERE key = $1"""

DELETE_PAYMENTS = """
WITH keys AS (DELETE FROM idempotency_keys WHERE payment_id = ANY($1::text[]))
DELETE FROM payments WHERE id = ANY($1::text[])"""

SETTING = """
WITH new AS (
    INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING
    RETURNING value
)
SELECT value FROM new UNION ALL SELECT value FROM settings WHERE name = $1 LIMIT 1"""
