"""Statement classification and the pure routing decision (which member runs a statement)."""
