-- Finding a dead letter by the id of the message that was dead-lettered
-- (the console's, the API's and the CLI's message_id filter).
CREATE INDEX dead_letters_message_id ON ops.dead_letters (message_id);
