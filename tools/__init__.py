"""Tooling of the book: book.py (book.toml -> Jupyter Book -> HTML), execute.py, classroom.py."""
