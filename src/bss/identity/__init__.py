"""The identity graph: user IDs in their link text form (`ids`), links between them kept in
the membership store, and the bounded expansion of an ID to its related IDs (`graph`)."""
