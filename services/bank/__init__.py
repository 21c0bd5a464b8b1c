"""The bank of known material: import, export, retirement, and the matcher every stage and
the HashCheck API query (kept fresh from the database or a published snapshot)."""
