"""Stage 3: a durable job ledger: every job's story in a database, not only in Redis."""
