SELECT json_set('{}', '$.a', 1, '$.b', json_array(1, 2)) -> '$.b[1]'
SELECT json_patch('{"a":1}', '{"a":null,"b":2}')
SELECT key, value FROM json_each('[1,{"a":2}]')
SELECT json_group_object(key, value) FROM json_tree('{"a":[1,2]}')
SELECT unhex('41-42', '-'), hex(randomblob(4)), printf('%.*c', 10, 'x')
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100) SELECT group_concat(x) FROM n
