-- Indexes behind the operator console: the last hour's ended sagas, the
-- newest-first saga list, and finding an order by its customer.
CREATE INDEX instances_ended_at ON saga.instances (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX orders_customer ON orders.orders (customer_id);
