CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB)
INSERT INTO t (name, data) VALUES (?, zeroblob(10))
SELECT upper(name), length(data), json_object('n', name) FROM t
SELECT instr(name, 'a'), replace(name, 'a', 'b'), name LIKE '%a%' FROM t
UPDATE t SET name = trim(name, 'x') WHERE id = last_insert_rowid()
SELECT count(*) FROM pragma_table_info('t')
