-- Outbox rows the relay can never publish (too large for the broker, topic
-- gone, not authorised) are parked here with the error, so that the rest of
-- the outbox moves on; `sagaflow parked` lists, retries or discards them.
CREATE TABLE orders.outbox_parked (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         uuid        NOT NULL,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    payload    bytea       NOT NULL,
    headers    jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    parked_at  timestamptz NOT NULL DEFAULT now(),
    error      text        NOT NULL
);
CREATE TABLE saga.outbox_parked (LIKE orders.outbox_parked INCLUDING ALL);
CREATE TABLE inventory.outbox_parked (LIKE orders.outbox_parked INCLUDING ALL);
CREATE TABLE payment.outbox_parked (LIKE orders.outbox_parked INCLUDING ALL);
CREATE TABLE shipping.outbox_parked (LIKE orders.outbox_parked INCLUDING ALL);
