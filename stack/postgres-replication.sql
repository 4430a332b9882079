-- Phase 3 of PostgreSQL bootstrap, as superuser on cdc_db, after postgres-schema.sql. Idempotent.
-- Variables: repl_user, publication.
--
-- debezium_heartbeat is written by the connector's heartbeat.action.query and is part of the
-- publication (but not of the connector's table list), so the replication slot keeps advancing
-- while users and orders are idle and the rest of the database is busy.
--
-- debezium_signal is the connector's signal table (signal.data.collection): a row inserted there
-- asks it for an incremental snapshot (`cdcconsumer resnapshot`), and the connector writes its
-- snapshot windows' watermarks into it. Debezium sees those rows through the publication, so the
-- table is part of it; the database owner (the application role) may send signals.

CREATE TABLE IF NOT EXISTS public.debezium_heartbeat (
    id  INTEGER     PRIMARY KEY,
    ts  TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS public.debezium_signal (
    id    VARCHAR(42)   PRIMARY KEY,
    type  VARCHAR(32)   NOT NULL,
    data  VARCHAR(2048)
);

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'repl_user') \gexec
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'repl_user') \gexec
SELECT format('GRANT SELECT ON public.users, public.orders TO %I', :'repl_user') \gexec
SELECT format('GRANT SELECT, INSERT, UPDATE ON public.debezium_heartbeat TO %I', :'repl_user') \gexec
SELECT format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.debezium_signal TO %I', :'repl_user') \gexec
SELECT format('GRANT SELECT, INSERT ON public.debezium_signal TO %I', pg_get_userbyid(datdba))
  FROM pg_database WHERE datname = current_database() \gexec

SELECT format('CREATE PUBLICATION %I FOR TABLE public.users, public.orders, public.debezium_heartbeat, '
              'public.debezium_signal', :'publication')
 WHERE NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'publication') \gexec
-- A publication made before the signal table existed gets it too.
SELECT format('ALTER PUBLICATION %I ADD TABLE public.debezium_signal', :'publication')
 WHERE NOT EXISTS (SELECT 1 FROM pg_publication_tables
                    WHERE pubname = :'publication' AND schemaname = 'public'
                      AND tablename = 'debezium_signal') \gexec
