-- How each instance's bus delivers events ('local', 'fanout' or 'store'):
-- an instance refuses to start beside live instances that use the other
-- RabbitMQ routing (docs/rabbitmq.md, "Store-routed delivery"). NULL for
-- rows written before this column existed.
ALTER TABLE instances ADD COLUMN bus TEXT;
