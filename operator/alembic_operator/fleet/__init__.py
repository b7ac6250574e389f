"""DatabaseMigrationSet: one migration, many databases, rolled out in waves (:mod:`.api` the kind, :mod:`.strategy`
the pure decisions, :mod:`.handlers` the operator's side)."""
