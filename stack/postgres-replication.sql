-- Phase 3 of PostgreSQL bootstrap, as superuser on cdc_db, after postgres-schema.sql. Idempotent.
-- Variables: repl_user, publication.
--
-- debezium_heartbeat is written by the connector's heartbeat.action.query and is part of the
-- publication (but not of the connector's table list), so the replication slot keeps advancing
-- while users and orders are idle and the rest of the database is busy.

CREATE TABLE IF NOT EXISTS public.debezium_heartbeat (
    id  INTEGER     PRIMARY KEY,
    ts  TIMESTAMPTZ NOT NULL
);

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'repl_user') \gexec
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'repl_user') \gexec
SELECT format('GRANT SELECT ON public.users, public.orders TO %I', :'repl_user') \gexec
SELECT format('GRANT SELECT, INSERT, UPDATE ON public.debezium_heartbeat TO %I', :'repl_user') \gexec

SELECT format('CREATE PUBLICATION %I FOR TABLE public.users, public.orders, public.debezium_heartbeat',
              :'publication')
 WHERE NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'publication') \gexec
