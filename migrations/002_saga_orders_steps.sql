-- The saga engine's instances and their append-only history.
CREATE TABLE saga.instances (
    id            uuid        PRIMARY KEY,
    type          text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('running', 'compensating', 'completed', 'compensated', 'failed', 'stuck')),
    -- index of the step whose action (running) or compensation (compensating) is awaited
    step          integer     NOT NULL,
    attempt       integer     NOT NULL,
    -- steps whose action succeeded (so need compensating on failure)
    completed     integer     NOT NULL DEFAULT 0,
    data          jsonb       NOT NULL,
    reason        text,
    step_deadline timestamptz,
    deadline      timestamptz NOT NULL,
    version       integer     NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz
);
-- The deadline sweeper's scan: only sagas still in flight.
CREATE INDEX instances_step_deadline ON saga.instances (step_deadline) WHERE state IN ('running', 'compensating');
-- GET /sagas?state= with cursor paging on id (UUIDv7, so time ordered).
CREATE INDEX instances_state_id ON saga.instances (state, id);

CREATE TABLE saga.history (
    seq        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga_id    uuid        NOT NULL,
    step       text        NOT NULL,
    kind       text        NOT NULL,
    attempt    integer     NOT NULL,
    event      text        NOT NULL,
    reason     text,
    message_id uuid,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX history_saga ON saga.history (saga_id, seq);

-- Orders, placed through the API.
CREATE TABLE orders.orders (
    id               uuid        PRIMARY KEY,
    saga_id          uuid        NOT NULL UNIQUE,
    idempotency_key  text        NOT NULL UNIQUE,
    request_hash     bytea       NOT NULL,
    customer_id      text        NOT NULL,
    items            jsonb       NOT NULL,
    amount_cents     bigint      NOT NULL CHECK (amount_cents > 0),
    currency         text        NOT NULL,
    shipping_address jsonb       NOT NULL,
    status           text        NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled')),
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Each participant keeps one row per (saga, step): what it did for it.
-- 'done': the action's effect is applied; 'refused': a business refusal, no
-- effect; 'compensated': the effect was undone; 'tombstone': the
-- compensation came first, so the action, if it ever arrives, is refused.
CREATE TABLE inventory.steps (
    saga_id    uuid        NOT NULL,
    step       text        NOT NULL,
    status     text        NOT NULL CHECK (status IN ('done', 'refused', 'compensated', 'tombstone')),
    reason     text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step)
);
CREATE TABLE payment.steps (LIKE inventory.steps INCLUDING ALL);
CREATE TABLE shipping.steps (LIKE inventory.steps INCLUDING ALL);

-- Inventory: stock per SKU (available never negative) and what each saga holds.
CREATE TABLE inventory.stock (
    sku       text    PRIMARY KEY,
    available integer NOT NULL CHECK (available >= 0),
    -- units ever put into stock: initial = available + units held by live reservations
    initial   integer NOT NULL CHECK (initial >= 0)
);
CREATE TABLE inventory.reservations (
    saga_id     uuid        NOT NULL,
    sku         text        NOT NULL REFERENCES inventory.stock (sku),
    quantity    integer     NOT NULL CHECK (quantity > 0),
    released_at timestamptz,
    PRIMARY KEY (saga_id, sku)
);

-- Payment: at most one charge per saga (the primary key), refunded on compensation.
CREATE TABLE payment.charges (
    saga_id      uuid        PRIMARY KEY,
    customer_id  text        NOT NULL,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    currency     text        NOT NULL,
    charged_at   timestamptz NOT NULL DEFAULT now(),
    refunded_at  timestamptz
);

-- Shipping: at most one shipment per saga, cancelled on compensation.
CREATE TABLE shipping.shipments (
    saga_id      uuid        PRIMARY KEY,
    address      jsonb       NOT NULL,
    shipped_at   timestamptz NOT NULL DEFAULT now(),
    cancelled_at timestamptz
);
