"""schedd's Lua scripts, one per file (loaded by schedd.store.scripts)."""
