"""Use cases. Services own the database transaction: they commit, routes never do."""
