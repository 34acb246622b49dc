//! The schema queuelock keeps in its own PostgreSQL schema, created and migrated by the
//! client itself (versioned, idempotent, serialized by an advisory transaction lock so
//! that several clients starting at once migrate it exactly once).
//!
//! Every contract operation that writes is one statement: a call of a PL/pgSQL function
//! defined here, so it is one transaction and one round trip.

use queuelock_core::{Error, Result};

/// The version of the schema this crate writes and reads.
pub(crate) const VERSION: i32 = 3;

/// Checks a schema name: lowercase letters, digits and `_`, starting with a letter or
/// `_`, at most 63 bytes (PostgreSQL's identifier limit). Such a name needs no quoting,
/// so it is safe to splice into SQL text.
pub(crate) fn check_schema(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "schema={name:?}: expected 1-63 of [a-z0-9_], starting with a letter or _, not pg_"
        )))
    }
}

/// The migrations, in order: migration `i` brings the schema to version `i + 1`. `{s}`
/// stands for the schema name.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE SEQUENCE {s}.tokens;
CREATE SEQUENCE {s}.session_ids;
CREATE TABLE {s}.sessions (
    id bigint PRIMARY KEY DEFAULT nextval('{s}.session_ids'),
    ttl interval NOT NULL,
    expires_at timestamptz NOT NULL,
    owner name NOT NULL DEFAULT current_user
);
CREATE INDEX sessions_expires_at ON {s}.sessions (expires_at);
CREATE TABLE {s}.queues (name text PRIMARY KEY);
CREATE TABLE {s}.nodes (
    key text PRIMARY KEY,
    queue text NOT NULL,
    seq bigint NOT NULL UNIQUE,
    kind text NOT NULL,
    attempt uuid NOT NULL UNIQUE,
    session_id bigint NOT NULL REFERENCES {s}.sessions (id) ON DELETE CASCADE,
    payload bytea NOT NULL,
    pver bigint NOT NULL DEFAULT 0,
    owner name NOT NULL DEFAULT current_user
);
CREATE INDEX nodes_queue_seq ON {s}.nodes (queue, seq);
CREATE INDEX nodes_session ON {s}.nodes (session_id);
CREATE TABLE {s}.abandoned (
    attempt uuid PRIMARY KEY,
    session_id bigint NOT NULL REFERENCES {s}.sessions (id) ON DELETE CASCADE
);
CREATE INDEX abandoned_session ON {s}.abandoned (session_id);
CREATE TABLE {s}.kv (key text PRIMARY KEY, value bytea NOT NULL);

-- The LISTEN channel for a node key ('k') or a queue ('q'): short and fixed-length.
CREATE FUNCTION {s}.channel(p_kind text, p_name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'ql' || p_kind || '_' || md5('{s}/' || p_name) $$;

CREATE FUNCTION {s}.listen(p_kind text, p_name text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE ch text := {s}.channel(p_kind, p_name);
BEGIN
    EXECUTE format('LISTEN %I', ch);
    RETURN ch;
END $$;

-- Every deletion of a node notifies its key's channel (whoever deletes it: a release, a
-- close, a reap cascading from an expired session); every change notifies its queue's.
CREATE FUNCTION {s}.notify_node() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify({s}.channel('k', OLD.key), '');
        PERFORM pg_notify({s}.channel('q', OLD.queue), '');
        RETURN OLD;
    END IF;
    PERFORM pg_notify({s}.channel('q', NEW.queue), '');
    RETURN NEW;
END $$;
CREATE TRIGGER nodes_notify AFTER INSERT OR UPDATE OR DELETE ON {s}.nodes
    FOR EACH ROW EXECUTE FUNCTION {s}.notify_node();

-- Removes expired sessions (and with them, by cascade, their nodes): there is no server
-- side expiry, so every client reaps. Rows another reaper (or a create) has locked are
-- skipped, so concurrent reapers never wait for, or deadlock with, each other.
CREATE FUNCTION {s}.reap() RETURNS bigint
LANGUAGE sql AS $$
    WITH doomed AS (
        SELECT id FROM {s}.sessions WHERE expires_at < clock_timestamp()
        ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM {s}.sessions s USING doomed d WHERE s.id = d.id RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

CREATE FUNCTION {s}.open_session(p_ttl_ms bigint) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO {s}.sessions (ttl, expires_at)
    VALUES (p_ttl_ms * interval '1 millisecond', clock_timestamp() + p_ttl_ms * interval '1 millisecond')
    RETURNING id
$$;

-- Extends a session that has not expired yet (an expired one stays expired). The client
-- reaps in a statement of its own, right after (not holding this row's lock).
CREATE FUNCTION {s}.keepalive(p_session bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH kept AS (
        UPDATE {s}.sessions SET expires_at = clock_timestamp() + ttl
        WHERE id = p_session AND expires_at > clock_timestamp() RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM kept)
$$;

-- Creates (or finds again, per attempt) a node at the end of its queue. The fencing token
-- is taken from the global sequence after the queue's row is locked, so within a queue
-- token order is commit order. The node's sequence is its token.
CREATE FUNCTION {s}.create_node(p_session bigint, p_queue text, p_kind text, p_attempt uuid, p_payload bytea)
RETURNS TABLE (key text, seq bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n record;
    t bigint;
BEGIN
    INSERT INTO {s}.queues (name) VALUES (p_queue) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM {s}.queues q WHERE q.name = p_queue FOR UPDATE;
    SELECT * INTO n FROM {s}.nodes x WHERE x.attempt = p_attempt;
    IF FOUND THEN
        IF n.session_id <> p_session THEN
            RAISE EXCEPTION 'attempt % belongs to another session', p_attempt USING ERRCODE = 'QL001';
        END IF;
        RETURN QUERY SELECT n.key, n.seq;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM {s}.abandoned a WHERE a.attempt = p_attempt) THEN
        RAISE EXCEPTION 'attempt % was abandoned', p_attempt USING ERRCODE = 'QL002';
    END IF;
    PERFORM 1 FROM {s}.sessions s WHERE s.id = p_session AND s.expires_at > clock_timestamp() FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'session % expired', p_session USING ERRCODE = 'QL003';
    END IF;
    t := nextval('{s}.tokens');
    RETURN QUERY INSERT INTO {s}.nodes AS x (key, queue, seq, kind, attempt, session_id, payload)
        VALUES (p_queue || '/' || p_kind || '-' || lpad(t::text, 19, '0'), p_queue, t, p_kind, p_attempt, p_session, p_payload)
        RETURNING x.key, x.seq;
END $$;

-- Removes an attempt's node and makes a create of that attempt still in flight fail
-- (serialized with creates by the queue's row lock).
CREATE FUNCTION {s}.abandon(p_session bigint, p_queue text, p_attempt uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM {s}.queues q WHERE q.name = p_queue FOR UPDATE;
    IF EXISTS (SELECT 1 FROM {s}.sessions s WHERE s.id = p_session) THEN
        INSERT INTO {s}.abandoned (attempt, session_id) VALUES (p_attempt, p_session)
            ON CONFLICT DO NOTHING;
    END IF;
    DELETE FROM {s}.nodes x WHERE x.attempt = p_attempt AND x.session_id = p_session;
END $$;

-- Applies writes only while the guard node (key and token) exists and its session has not
-- expired; the guard's row is share-locked until the writes commit.
CREATE FUNCTION {s}.guarded(p_key text, p_token bigint, p_keys text[], p_values bytea[], p_deletes boolean[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM {s}.nodes n JOIN {s}.sessions s ON s.id = n.session_id
        WHERE n.key = p_key AND n.seq = p_token AND s.expires_at > clock_timestamp()
        FOR SHARE OF n;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'guard % is gone', p_key USING ERRCODE = 'QL004';
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        IF p_keys[i] = p_key THEN
            IF p_deletes[i] THEN
                DELETE FROM {s}.nodes n WHERE n.key = p_key;
            ELSE
                UPDATE {s}.nodes n SET payload = p_values[i], pver = n.pver + 1 WHERE n.key = p_key;
            END IF;
        ELSIF p_deletes[i] THEN
            DELETE FROM {s}.kv WHERE key = p_keys[i];
        ELSE
            INSERT INTO {s}.kv (key, value) VALUES (p_keys[i], p_values[i])
                ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
        END IF;
    END LOOP;
END $$;
"#,
    r#"
-- Row-level security: every role that may use the schema sees every row (status,
-- waiting behind others), but changes only its own sessions and nodes. Anyone may reap
-- (lock, delete) a session that has expired; nodes go with it by cascade, which RLS
-- does not filter. The schema's owner (who migrated it) is not subject to the policies.
ALTER TABLE {s}.sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY sessions_read ON {s}.sessions FOR SELECT USING (true);
CREATE POLICY sessions_insert ON {s}.sessions FOR INSERT WITH CHECK (owner = current_user);
CREATE POLICY sessions_update ON {s}.sessions FOR UPDATE
    USING (owner = current_user OR expires_at < clock_timestamp())
    WITH CHECK (owner = current_user);
CREATE POLICY sessions_delete ON {s}.sessions FOR DELETE
    USING (owner = current_user OR expires_at < clock_timestamp());
ALTER TABLE {s}.nodes ENABLE ROW LEVEL SECURITY;
CREATE POLICY nodes_read ON {s}.nodes FOR SELECT USING (true);
CREATE POLICY nodes_insert ON {s}.nodes FOR INSERT WITH CHECK (
    owner = current_user
    AND EXISTS (SELECT 1 FROM {s}.sessions s WHERE s.id = session_id AND s.owner = current_user));
CREATE POLICY nodes_update ON {s}.nodes FOR UPDATE
    USING (owner = current_user) WITH CHECK (owner = current_user);
CREATE POLICY nodes_delete ON {s}.nodes FOR DELETE USING (owner = current_user);
ALTER TABLE {s}.abandoned ENABLE ROW LEVEL SECURITY;
CREATE POLICY abandoned_read ON {s}.abandoned FOR SELECT USING (true);
CREATE POLICY abandoned_insert ON {s}.abandoned FOR INSERT WITH CHECK (
    EXISTS (SELECT 1 FROM {s}.sessions s WHERE s.id = session_id AND s.owner = current_user));
"#,
    r#"
-- Cooperative revocation: a request for a node (key and token) is a row that goes with
-- the node (cascade) and notifies the node's revocation channel ('r'). Any role that uses
-- the schema may ask any holder (that is what a request is for), but only for a node that
-- exists; nobody deletes or changes another's request (no such policy: only the cascade).
CREATE TABLE {s}.revocations (
    key text PRIMARY KEY REFERENCES {s}.nodes (key) ON DELETE CASCADE,
    seq bigint NOT NULL
);
ALTER TABLE {s}.revocations ENABLE ROW LEVEL SECURITY;
CREATE POLICY revocations_read ON {s}.revocations FOR SELECT USING (true);
CREATE POLICY revocations_insert ON {s}.revocations FOR INSERT WITH CHECK (
    EXISTS (SELECT 1 FROM {s}.nodes n WHERE n.key = revocations.key AND n.seq = revocations.seq));

-- Leaves the request unless the node (key, token) is gone: true when it exists. The
-- foreign key's check locks the node's row (another role's row cannot be locked FOR
-- SHARE through RLS); a node deleted after the read fails it: false.
CREATE FUNCTION {s}.request_revoke(p_key text, p_seq bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM {s}.nodes n WHERE n.key = p_key AND n.seq = p_seq;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    BEGIN
        INSERT INTO {s}.revocations (key, seq) VALUES (p_key, p_seq) ON CONFLICT DO NOTHING;
    EXCEPTION WHEN foreign_key_violation THEN
        RETURN false;
    END;
    PERFORM pg_notify({s}.channel('r', p_key), '');
    RETURN true;
END $$;
"#,
];

/// The SQL of migration `i` for schema `s`.
pub(crate) fn migration(i: usize, s: &str) -> String {
    MIGRATIONS[i].replace("{s}", s)
}

/// How many migrations there are (= [`VERSION`]).
pub(crate) fn count() -> usize {
    MIGRATIONS.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        assert!(check_schema("queuelock").is_ok());
        assert!(check_schema("_app_2").is_ok());
        for bad in [
            "",
            "Queuelock",
            "1x",
            "a-b",
            "a;drop",
            "pg_x",
            &"a".repeat(64),
        ] {
            assert!(check_schema(bad).is_err(), "{bad:?}");
        }
        assert_eq!(count(), VERSION as usize);
        assert!(!migration(0, "x").contains("{s}"));
    }
}
