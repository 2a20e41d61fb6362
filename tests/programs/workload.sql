-- An SQLite workload: a generated table, an index, joins, aggregates, updates and deletes.
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, payload BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000)
INSERT INTO t SELECT i, 'name' || i, i % 37, zeroblob(i % 500) FROM n;
CREATE INDEX t_grp ON t(grp, name);
SELECT grp, count(*), sum(length(payload)), min(name), max(name) FROM t GROUP BY grp ORDER BY grp;
UPDATE t SET name = name || '-updated' WHERE id % 3 = 0;
DELETE FROM t WHERE id % 5 = 0;
SELECT count(*), sum(length(name)) FROM t;
CREATE TABLE u AS SELECT grp, group_concat(name, ',') AS names FROM t WHERE id < 2000 GROUP BY grp;
SELECT grp, length(names) FROM u ORDER BY grp;
SELECT a.grp, count(*) FROM t a JOIN u b ON a.grp = b.grp WHERE a.id < 10000 GROUP BY a.grp ORDER BY 2 DESC, 1 LIMIT 5;
VACUUM;
SELECT count(*) FROM t;
