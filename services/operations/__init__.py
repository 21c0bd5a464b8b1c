"""Operations: notices that need an operator (delivery unknown, refused, failing for long)."""
