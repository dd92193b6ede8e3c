-- Settling an order checks in the database that it was pending, and fails
-- the statement otherwise: the check no longer needs the statement's result
-- in the client, so the orchestrator's last writes of a saga can go to the
-- server with its COMMIT (see docs/design.md, "Round trips of an inbox
-- transaction").
CREATE FUNCTION orders.settle(p_id uuid, p_status text, p_reason text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE orders.orders SET status = p_status, reason = NULLIF(p_reason, ''), updated_at = now()
    WHERE id = p_id AND status = 'pending';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'mark order % %: the order is missing or not pending', p_id, p_status
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;
