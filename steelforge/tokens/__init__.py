"""Tokenize & pack into a token store; the global sample order over it and the loader training iterates."""
