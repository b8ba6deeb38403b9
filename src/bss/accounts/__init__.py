"""Members, users, login tokens."""
