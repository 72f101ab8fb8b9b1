"""Course scaffolding, not serving code: the preflight checks (notebook 00), lab checks (labs/), the seed
document read as data and its claims ledger (notebook 09), the pinned environment's conda twin, the
gateway drills notebook 08 runs, the facilitator guide for instructors (``facilitator``), and the
glossary's first-use links in every notebook (``glossary``, docs/glossary.md).
"""
