-- The source table the producer and workers read (VERA's default column names, with a
-- serial watermark column), and a few files so that the stack has something to pack.
CREATE TABLE files (
    seq BIGSERIAL PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    content_type TEXT,
    payload BYTEA NOT NULL
);

INSERT INTO files (uid, created_at, content_type, payload)
SELECT format('compose-%s', lpad(n::text, 4, '0')),
       timestamptz '2026-11-24 10:00:00+00' + (n / 100) * interval '1 day',
       'application/json',
       convert_to(format('{"receipt":%s,"total":"%s.00"}', n, n * 7), 'UTF8')
FROM generate_series(1, 1000) AS n;
