-- Each service owns a schema with its own transactional outbox and inbox.
-- The outbox holds messages written in the same transaction as the business
-- change; the relay publishes them to Kafka in seq order and deletes them.
-- The inbox records which messages a consumer has applied, in the same
-- transaction as the effect, so a redelivered message changes nothing.

CREATE FUNCTION public.sagaflow_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sagaflow_outbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END;
$$;

CREATE SCHEMA orders;
CREATE SCHEMA saga;
CREATE SCHEMA inventory;
CREATE SCHEMA payment;
CREATE SCHEMA shipping;

CREATE TABLE orders.outbox (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         uuid        NOT NULL,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    payload    bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders.inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    -- redeliveries of this message that the inbox absorbed
    duplicates  integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX ON orders.inbox USING brin (received_at);
CREATE TRIGGER outbox_notify AFTER INSERT ON orders.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.sagaflow_outbox_notify();

CREATE TABLE saga.outbox (LIKE orders.outbox INCLUDING ALL);
CREATE TABLE saga.inbox (LIKE orders.inbox INCLUDING ALL);
CREATE TRIGGER outbox_notify AFTER INSERT ON saga.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.sagaflow_outbox_notify();

CREATE TABLE inventory.outbox (LIKE orders.outbox INCLUDING ALL);
CREATE TABLE inventory.inbox (LIKE orders.inbox INCLUDING ALL);
CREATE TRIGGER outbox_notify AFTER INSERT ON inventory.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.sagaflow_outbox_notify();

CREATE TABLE payment.outbox (LIKE orders.outbox INCLUDING ALL);
CREATE TABLE payment.inbox (LIKE orders.inbox INCLUDING ALL);
CREATE TRIGGER outbox_notify AFTER INSERT ON payment.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.sagaflow_outbox_notify();

CREATE TABLE shipping.outbox (LIKE orders.outbox INCLUDING ALL);
CREATE TABLE shipping.inbox (LIKE orders.inbox INCLUDING ALL);
CREATE TRIGGER outbox_notify AFTER INSERT ON shipping.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.sagaflow_outbox_notify();
