-- Schema of the primary database (cdc_db). Idempotent: applied by the stack at start and by the
-- consumer before it writes, so it may run any number of times — also while other sessions write:
-- on a database that already has it, it takes no table lock (each change that would lock a table,
-- an index, the replica identity, the trigger, is made only when it is missing), so a consumer
-- starting beside a running one cannot deadlock with that one's transactions.
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

DO $$
BEGIN
    IF to_regclass('orders_user_id_idx') IS NULL THEN
        CREATE INDEX orders_user_id_idx ON orders (user_id);
    END IF;
    IF (SELECT relreplident FROM pg_class WHERE oid = 'users'::regclass) <> 'f' THEN
        ALTER TABLE users REPLICA IDENTITY FULL;
    END IF;
    IF (SELECT relreplident FROM pg_class WHERE oid = 'orders'::regclass) <> 'f' THEN
        ALTER TABLE orders REPLICA IDENTITY FULL;
    END IF;
END
$$;

-- A user's soft delete marks their live orders deleted at the same instant. The consumer applies
-- the same rule to an order that arrives after its user was deleted (see crates/core/src/pg.rs), so
-- the result does not depend on which arrives first.
-- Values the pipeline cannot carry to Cassandra are refused here, loudly, instead of reaching the
-- sinks: ±infinity timestamps and dates, dates and times beyond year 262142 (what the sinks can
-- represent; PostgreSQL goes further), a NaN amount (NUMERIC(12, 2) admits NaN but no infinity),
-- and rows whose text exceeds 4 MiB (a change record carries a row twice, before and after, and
-- Kafka takes records up to 32 MiB: stack/topology.env). Years before 1 AD and up to 262142, and
-- rows up to that size, are mirrored exactly. Added only when missing, NOT VALID (no scan of
-- existing rows, a short lock on first start only).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'users'::regclass AND conname = 'users_values_mirrorable') THEN
        ALTER TABLE users ADD CONSTRAINT users_values_mirrorable CHECK (
            created_at > '-infinity' AND created_at < '262143-01-01 00:00:00+00'
            AND updated_at > '-infinity' AND updated_at < '262143-01-01 00:00:00+00'
            AND (deleted_at IS NULL
                 OR (deleted_at > '-infinity' AND deleted_at < '262143-01-01 00:00:00+00'))
        ) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'users'::regclass AND conname = 'users_row_size_mirrorable') THEN
        ALTER TABLE users ADD CONSTRAINT users_row_size_mirrorable
            CHECK (octet_length(name) + octet_length(email) <= 4194304) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'orders'::regclass AND conname = 'orders_row_size_mirrorable') THEN
        ALTER TABLE orders ADD CONSTRAINT orders_row_size_mirrorable
            CHECK (octet_length(product) + octet_length(status) <= 4194304) NOT VALID;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = 'orders'::regclass AND conname = 'orders_values_mirrorable') THEN
        ALTER TABLE orders ADD CONSTRAINT orders_values_mirrorable CHECK (
            amount <> 'NaN'
            AND order_date > '-infinity' AND order_date < '262143-01-01'
            AND created_at > '-infinity' AND created_at < '262143-01-01 00:00:00+00'
            AND updated_at > '-infinity' AND updated_at < '262143-01-01 00:00:00+00'
            AND (deleted_at IS NULL
                 OR (deleted_at > '-infinity' AND deleted_at < '262143-01-01 00:00:00+00'))
        ) NOT VALID;
    END IF;
END
$$;

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

-- Created only when missing (creating a trigger locks the table); to change its definition, drop it
-- first.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'users'::regclass AND tgname = 'users_soft_delete_cascade') THEN
        CREATE TRIGGER users_soft_delete_cascade
            AFTER UPDATE OF deleted_at ON users
            FOR EACH ROW
            WHEN (OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL)
            EXECUTE FUNCTION mark_user_orders_deleted();
    END IF;
END
$$;
