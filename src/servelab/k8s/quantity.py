"""Kubernetes quantities ("512Mi", "8Gi", "500m", "2", "1e3"): one grammar and one parser for the kit.

The grammar is k8s.io/apimachinery's (``resource.Quantity``): a number, then a binary suffix
(Ki..Ei), a decimal one (m, k, M..E) or an exponent. The API server rejects "1Gb", "8 Gi" or "1gi",
while the JSON schemas only say "string or number", so the manifest checks need the grammar; the
arithmetic is the Kubernetes client's own ``parse_quantity``.
"""

from __future__ import annotations

import re
from typing import Any

from servelab.errors import ServelabError

QUANTITY = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([KMGTPE]i|[mkMGTPE]|[eE][+-]?\d+)?")
EXAMPLES = "e.g. 512Mi, 8Gi, 500m, 2"


def is_quantity(value: object) -> bool:
    """Whether the API server would accept ``value`` as a quantity."""
    return QUANTITY.fullmatch(str(value).strip()) is not None


def parse(value: str | int | float) -> float:
    """A quantity as a plain number: ``"200m"`` → 0.2, ``"1Ki"`` → 1024, ``10`` → 10."""
    if not is_quantity(value):
        raise ServelabError(f"{value!r} is not a Kubernetes quantity", f"write one as Kubernetes does ({EXAMPLES})")
    from kubernetes.utils.quantity import parse_quantity  # lazy: importing the client takes ~1 s

    return float(parse_quantity(str(value).strip()))


def resource(resources: Any, section: str, name: str) -> float | None:
    """A container's ``resources.<section>.<name>`` (e.g. ``"limits"``, ``"cpu"``) as a plain number.

    None where it is missing or malformed: a manifest under review may have any shape, and the manifest
    checks report a malformed quantity on their own.
    """
    amounts = resources.get(section) if isinstance(resources, dict) else None
    value = amounts.get(name) if isinstance(amounts, dict) else None
    return parse(value) if value is not None and is_quantity(value) else None


def memory_mib(resources: Any, section: str) -> float | None:
    """``resources.<section>.memory`` in MiB, the unit the kit measures resident memory in; None as in
    :func:`resource`."""
    amount = resource(resources, section, "memory")
    return None if amount is None else amount / 2**20
