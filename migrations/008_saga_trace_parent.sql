-- The W3C traceparent of a saga's root span (tracing on; NULL otherwise):
-- the sweeper's resends and timeouts join the saga's trace.
ALTER TABLE saga.instances ADD COLUMN trace_parent text;
