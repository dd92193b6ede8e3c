-- Dead letters: every message a consumer gave up on, recorded from the
-- dead-letter topics by package deadletter, with where it came from (topic,
-- partition, offset, key, consumer group), its headers and payload, the
-- error and the saga it belongs to, so that an operator lists, inspects,
-- replays and purges them without Kafka's tools (`sagaflow dlq`,
-- /dead-letters). The schema ops holds what operators act on.
CREATE SCHEMA ops;
CREATE TABLE ops.dead_letters (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The dead letter's own place in its dead-letter topic: recording the
    -- same Kafka record twice is a no-op.
    dlq_topic        text        NOT NULL,
    dlq_partition    int         NOT NULL,
    dlq_offset       bigint      NOT NULL,
    message_id       text        NOT NULL,
    consumer_group   text        NOT NULL,
    origin_topic     text        NOT NULL,
    origin_partition int,
    origin_offset    bigint,
    key              text        NOT NULL,
    message_type     text        NOT NULL,
    headers          jsonb       NOT NULL,
    payload          bytea       NOT NULL,
    error            text        NOT NULL,
    -- The error with ids, numbers and quoted values replaced, and a hash
    -- of (consumer group, message type, that pattern): dead letters of
    -- one cause share a fingerprint.
    error_pattern    text        NOT NULL,
    fingerprint      text        NOT NULL,
    attempts         int,
    saga_id          uuid,
    step             text,
    dead_lettered_at timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    replays          int         NOT NULL DEFAULT 0,
    last_replayed_at timestamptz,
    UNIQUE (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX dead_letters_fingerprint ON ops.dead_letters (fingerprint, id);
CREATE INDEX dead_letters_saga ON ops.dead_letters (saga_id) WHERE saga_id IS NOT NULL;
CREATE INDEX dead_letters_time ON ops.dead_letters (dead_lettered_at);
