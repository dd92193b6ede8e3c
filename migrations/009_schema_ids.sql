-- The schema registry's ids of the wire contract's schemas, as the last
-- successful registration left them (package registry owns the table): a
-- process that starts while the registry is unreachable sends with these,
-- so a registry outage does not stop traffic that uses known schemas.
CREATE TABLE ops.schema_ids (
    registry      text        NOT NULL,
    topic         text        NOT NULL,
    schema_name   text        NOT NULL,
    version       integer     NOT NULL,
    id            integer     NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (registry, topic, schema_name, version)
);
