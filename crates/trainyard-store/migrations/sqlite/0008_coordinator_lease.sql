-- Leadership among the coordinators that share this database: one row, held by one coordinator
-- until `expires_at_ms` (the database's clock), then taken over with the next epoch. Every write of
-- a leader checks, in its own transaction, that the epoch is still its own (fencing).
CREATE TABLE coordinator_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    address TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
