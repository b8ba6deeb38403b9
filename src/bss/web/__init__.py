"""The web dashboard: server-rendered pages at `/` and `/ui/...` over the same accounts, tokens
and JSON API (the browser changes data only through the JSON API)."""
