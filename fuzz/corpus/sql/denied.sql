SELECT load_extension('x')
SELECT fts3_tokenizer('simple')
SELECT sqlite_compileoption_get(0)
SELECT json_pretty('[1]')
CREATE VIRTUAL TABLE f USING fts5(x)
ATTACH 'x' AS y
PRAGMA writable_schema = 1
SELECT * FROM dbstat
