"""The SQL log: table definitions, the engine's life, the write path and the read queries."""
