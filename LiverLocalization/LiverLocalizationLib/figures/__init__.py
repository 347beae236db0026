"""PNG figures of each stage (matplotlib is imported inside the functions, never at import)."""
