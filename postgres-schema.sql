-- Schema of the primary database (cdc_db). Idempotent: applied by the stack at start and by the
-- consumer before it writes, so it may run any number of times.
--
-- Rows are soft-deleted: `deleted_at` is set instead of removing the row, and deleting a user marks
-- all of that user's orders deleted (trigger below). `version` is the per-entity version carried by
-- every business event; the consumer's upserts only ever move it forward, so replays, duplicates and
-- reordered events cannot regress a row.
--
-- REPLICA IDENTITY FULL makes Debezium's before-images complete, which the Cassandra sink needs to
-- remove an order from orders_by_user (partitioned by user_id) when the order is hard-deleted or moves
-- to another user.

CREATE TABLE IF NOT EXISTS users (
    id          UUID        PRIMARY KEY,
    name        TEXT        NOT NULL,
    email       TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    deleted_at  TIMESTAMPTZ,
    version     BIGINT      NOT NULL CHECK (version >= 0)
);

CREATE TABLE IF NOT EXISTS orders (
    id          UUID           PRIMARY KEY,
    user_id     UUID           NOT NULL REFERENCES users (id),
    product     TEXT           NOT NULL,
    quantity    INTEGER        NOT NULL CHECK (quantity > 0),
    amount      NUMERIC(12, 2) NOT NULL CHECK (amount >= 0),
    status      TEXT           NOT NULL
                CHECK (status IN ('PLACED', 'SHIPPED', 'DELIVERED', 'CANCELLED')),
    order_date  DATE           NOT NULL,
    created_at  TIMESTAMPTZ    NOT NULL,
    updated_at  TIMESTAMPTZ    NOT NULL,
    deleted_at  TIMESTAMPTZ,
    version     BIGINT         NOT NULL CHECK (version >= 0)
);

CREATE INDEX IF NOT EXISTS orders_user_id_idx ON orders (user_id);

ALTER TABLE users REPLICA IDENTITY FULL;
ALTER TABLE orders REPLICA IDENTITY FULL;

-- A user's soft delete marks their live orders deleted at the same instant. The consumer applies
-- the same rule to an order that arrives after its user was deleted (see crates/core/src/pg.rs), so
-- the result does not depend on which arrives first.
CREATE OR REPLACE FUNCTION mark_user_orders_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE orders
       SET deleted_at = NEW.deleted_at,
           updated_at = GREATEST(updated_at, NEW.deleted_at)
     WHERE user_id = NEW.id
       AND deleted_at IS NULL;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS users_soft_delete_cascade ON users;
CREATE TRIGGER users_soft_delete_cascade
    AFTER UPDATE OF deleted_at ON users
    FOR EACH ROW
    WHEN (OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL)
    EXECUTE FUNCTION mark_user_orders_deleted();
