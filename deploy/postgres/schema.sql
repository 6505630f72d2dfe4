-- merchant-edge core-pg: the default merchants table, and the change numbering that core-pg reads
-- from the WAL by logical decoding. Run once per database, as its owner:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f deploy/postgres/schema.sql
-- It is safe to run again (everything is CREATE ... IF NOT EXISTS / CREATE OR REPLACE).
--
-- How changes are numbered (docs/postgres.md explains the design):
-- * merchant_edge.head holds the last change sequence. Every change to the tracked table takes the
--   next number in an AFTER ROW trigger, while the transaction holds the head row's lock until it
--   commits: sequences are contiguous (a rolled-back change gives its number back) and in commit order.
-- * The same trigger writes the change, with its number and the row as stored, into the WAL as a
--   transactional logical message (pg_logical_emit_message). core-pg reads those messages from its
--   replication slot with pgoutput: a change reaches it only once its transaction committed, whole and
--   in commit order.
-- * A BEFORE ROW trigger stamps the row's version (larger than any version the merchant had) and
--   updated_at, so reads of the table and the notices agree.
BEGIN;

CREATE SCHEMA IF NOT EXISTS merchant_edge;

CREATE TABLE IF NOT EXISTS merchant_edge.head (
    singleton     boolean  PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The sequence of the last committed change of the tracked table.
    last_sequence bigint   NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    -- Names this numbering: a database restored from a dump keeps it, so core-pg also ties its
    -- incarnation to the cluster's system identifier, timeline and the database's OID.
    history       uuid     NOT NULL DEFAULT gen_random_uuid(),
    -- The one table whose changes are numbered (merchant_edge.track).
    tracked_table regclass
);
INSERT INTO merchant_edge.head DEFAULT VALUES ON CONFLICT DO NOTHING;

-- The last sequence taken so far: on a transaction's first change, the committed head, read with the
-- head row's lock, which the transaction then holds until it commits (so no other writer can commit
-- numbers in between); after that, what this transaction took last, kept in a transaction-local
-- setting (rolled back with a savepoint like the changes it numbered). The head row itself is written
-- once, at commit (merchant_edge.record_head): updating one row for every change of a large
-- transaction costs time quadratic in its size.
CREATE OR REPLACE FUNCTION merchant_edge.last_taken() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    taken text := nullif(current_setting('merchant_edge.taken', true), '');
    committed bigint;
BEGIN
    IF taken IS NOT NULL THEN
        RETURN taken::bigint;
    END IF;
    SELECT last_sequence INTO committed FROM merchant_edge.head FOR UPDATE;
    PERFORM set_config('merchant_edge.taken', committed::text, true);
    RETURN committed;
END
$$;

-- BEFORE INSERT OR UPDATE, per row. Arguments: id column, version column, updated_at column ('' for
-- none). The version is above every sequence taken so far, so it grows with every change of a merchant
-- (and a merchant deleted and created again starts above its old versions).
CREATE OR REPLACE FUNCTION merchant_edge.stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW := jsonb_populate_record(NEW,
        jsonb_build_object(TG_ARGV[1], merchant_edge.last_taken() + 1, TG_ARGV[2], statement_timestamp()));
    RETURN NEW;
END
$$;

-- Takes the next sequence and writes one change into the WAL (decoded only if the transaction commits).
CREATE OR REPLACE FUNCTION merchant_edge.emit_change(kind text, row_image jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    sequence bigint := merchant_edge.last_taken() + 1;
BEGIN
    PERFORM set_config('merchant_edge.taken', sequence::text, true);
    PERFORM pg_logical_emit_message(true, 'merchant_edge.change',
        jsonb_build_object('seq', sequence, 'kind', kind, 'row', row_image)::text);
END
$$;

-- AFTER INSERT OR UPDATE OR DELETE, per row (fired only for rows really changed: an
-- INSERT ... ON CONFLICT DO NOTHING that did nothing takes no number). Argument: the id column. An
-- UPDATE that changes the id is two changes: the old id deleted, the new one upserted.
CREATE OR REPLACE FUNCTION merchant_edge.number_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND to_jsonb(OLD) -> TG_ARGV[0] IS DISTINCT FROM to_jsonb(NEW) -> TG_ARGV[0]) THEN
        PERFORM merchant_edge.emit_change('D', to_jsonb(OLD));
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM merchant_edge.emit_change('U', to_jsonb(NEW));
    END IF;
    RETURN NULL;
END
$$;

-- Deferred to commit, per changed row: writes the last sequence taken into the head row, once per
-- transaction (the rows after the first find it written).
CREATE OR REPLACE FUNCTION merchant_edge.record_head() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    taken text := nullif(current_setting('merchant_edge.taken', true), '');
BEGIN
    IF taken IS DISTINCT FROM nullif(current_setting('merchant_edge.recorded', true), '') THEN
        UPDATE merchant_edge.head SET last_sequence = taken::bigint;
        PERFORM set_config('merchant_edge.recorded', taken, true);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION merchant_edge.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % would remove merchants without numbered changes, so edges would keep serving them', TG_TABLE_NAME
        USING HINT = 'Use DELETE: it numbers one change per row.';
END
$$;

-- Puts a table under core-pg's numbering: its triggers, enabled ALWAYS (so they fire for sessions in
-- session_replication_role = replica too). A database numbers the changes of one table.
CREATE OR REPLACE FUNCTION merchant_edge.track(tracked regclass, id_column text, version_column text, updated_at_column text DEFAULT '')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    already regclass;
    wanted text;
BEGIN
    SELECT tracked_table INTO already FROM merchant_edge.head FOR UPDATE;
    IF already IS NOT NULL AND already <> tracked THEN
        RAISE EXCEPTION 'merchant_edge already numbers the changes of %; a database numbers one table', already;
    END IF;
    FOREACH wanted IN ARRAY ARRAY[id_column, version_column] || CASE WHEN updated_at_column = '' THEN ARRAY[]::text[] ELSE ARRAY[updated_at_column] END LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = tracked AND attname = wanted AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'table % has no column %', tracked, wanted;
        END IF;
    END LOOP;
    EXECUTE format('CREATE OR REPLACE TRIGGER merchant_edge_stamp BEFORE INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION merchant_edge.stamp(%L, %L, %L)',
        tracked, id_column, version_column, updated_at_column);
    EXECUTE format('CREATE OR REPLACE TRIGGER merchant_edge_number AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION merchant_edge.number_change(%L)',
        tracked, id_column);
    -- Constraint triggers have no CREATE OR REPLACE.
    EXECUTE format('DROP TRIGGER IF EXISTS merchant_edge_record_head ON %s', tracked);
    EXECUTE format('CREATE CONSTRAINT TRIGGER merchant_edge_record_head AFTER INSERT OR UPDATE OR DELETE ON %s DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION merchant_edge.record_head()',
        tracked);
    EXECUTE format('CREATE OR REPLACE TRIGGER merchant_edge_no_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION merchant_edge.refuse_truncate()',
        tracked);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER merchant_edge_stamp, ENABLE ALWAYS TRIGGER merchant_edge_number, ENABLE ALWAYS TRIGGER merchant_edge_record_head, ENABLE ALWAYS TRIGGER merchant_edge_no_truncate', tracked);
    UPDATE merchant_edge.head SET tracked_table = tracked;
END
$$;

-- Takes a table out of the numbering (its changes are no longer seen by core-pg), e.g. the default
-- merchants table before a bank's own table is tracked instead.
CREATE OR REPLACE FUNCTION merchant_edge.untrack(tracked regclass)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS merchant_edge_stamp ON %s', tracked);
    EXECUTE format('DROP TRIGGER IF EXISTS merchant_edge_number ON %s', tracked);
    EXECUTE format('DROP TRIGGER IF EXISTS merchant_edge_record_head ON %s', tracked);
    EXECUTE format('DROP TRIGGER IF EXISTS merchant_edge_no_truncate ON %s', tracked);
    UPDATE merchant_edge.head SET tracked_table = NULL WHERE tracked_table = tracked;
END
$$;

-- core-pg reads only the logical messages above; a publication with no tables keeps pgoutput from
-- sending the row changes as well.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'merchant_edge') THEN
        CREATE PUBLICATION merchant_edge;
    END IF;
END
$$;

-- The default merchants table. A bank's own table is mapped in core-pg's config ([postgres] table and
-- [postgres.columns]) and put under the numbering with merchant_edge.track instead.
CREATE TABLE IF NOT EXISTS merchants (
    merchant_id text        PRIMARY KEY,
    name        text        NOT NULL DEFAULT '',
    mcc         text        NOT NULL DEFAULT '',
    city        text        NOT NULL DEFAULT '',
    status      text        NOT NULL DEFAULT 'ACTIVE'
                            CHECK (status IN ('ACTIVE', 'PENDING_REVIEW', 'SUSPENDED', 'CLOSED')),
    version     bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
SELECT merchant_edge.track('merchants', 'merchant_id', 'version', 'updated_at');

COMMIT;
