-- Who answered: a reply of schema version 2 names the participant (the
-- service) that sent it, and the saga's history keeps it beside the
-- answer. NULL on every other line, and on lines written before.
ALTER TABLE saga.history ADD COLUMN participant text;
