"""Package data: the published BSS Avro schema (xandr_user.avsc)."""
