"""Course scaffolding, not serving code: the preflight checks, lab checks, the pinned environment's
conda twin, and the gateway drills notebook 08 runs (notebooks 00, 08 and the labs).
"""
