-- The source table the producer and workers read (VERA's default column names, with a
-- serial watermark column), and a few files so that the stack has something to pack.
-- vera_xid records each row's inserting transaction: the producer reads only below the
-- oldest running transaction, so a row that commits late is never passed over
-- (docs/adr/0004-visibility-horizon.md); vera refuses a table without it.
CREATE TABLE files (
    seq BIGSERIAL PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    content_type TEXT,
    payload BYTEA NOT NULL,
    vera_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX files_vera_xid ON files (vera_xid, seq);

INSERT INTO files (uid, created_at, content_type, payload)
SELECT format('compose-%s', lpad(n::text, 4, '0')),
       timestamptz '2026-11-24 10:00:00+00' + (n / 100) * interval '1 day',
       'application/json',
       convert_to(format('{"receipt":%s,"total":"%s.00"}', n, n * 7), 'UTF8')
FROM generate_series(1, 1000) AS n;
