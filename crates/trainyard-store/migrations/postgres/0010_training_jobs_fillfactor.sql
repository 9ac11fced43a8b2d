-- A training job's row is rewritten several times in its life (queued, placed, each step of its
-- run, its end), and only the last of these changes an indexed column (`status`,
-- `objective_value`). A rewrite that finds room on the row's own page is a heap-only tuple: no new
-- entry in each of the table's seven indexes. With full pages almost none found room (2 % of the
-- creates bench's updates); with pages written half full, all of them: the database's CPU per
-- create fell by an eighth, and the table with its indexes took no more space (the indexes grow
-- less by what the heap grows more). A row is ~1.8 KB, so a quarter free (75) made only a third
-- of the rewrites heap-only. Applies to pages written from now on.
ALTER TABLE training_jobs SET (fillfactor = 50);
