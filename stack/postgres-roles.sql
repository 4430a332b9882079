-- Phase 1 of PostgreSQL bootstrap, as superuser on database "postgres". Idempotent.
-- Variables: app_user, app_password, repl_user, repl_password, db.
--   app_user  owns cdc_db and its tables; the consumer writes as this role (password auth).
--   repl_user is Debezium's role: LOGIN REPLICATION, SELECT on the captured tables, nothing more.

SELECT format('CREATE ROLE %I LOGIN', :'app_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER PASSWORD %L', :'app_user', :'app_password') \gexec

SELECT format('CREATE ROLE %I LOGIN REPLICATION', :'repl_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'repl_user') \gexec
SELECT format('ALTER ROLE %I LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',
              :'repl_user', :'repl_password') \gexec

SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'app_user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
