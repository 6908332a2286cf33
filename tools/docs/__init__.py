"""The generated half of the docs: the reference pages, the performance page
and the man page, written from the code (``python -m tools.docs``; ``make
reference``). tests/unit/test_reference.py fails when a committed page
differs from what ``pages()`` writes, so the reference cannot drift.

In tools/, not ingest/: it reads observe/'s collector with stand-in host facts
(nothing in the package imports observe/ but the daemon), and it is for
whoever builds the docs, not something ingest installs.
"""
