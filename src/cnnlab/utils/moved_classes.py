"""Classes that moved within cnnlab, for configs recorded before the move (checkpoints, Hydra records).

Kept apart from utils/config.py so that light scripts (pool_benchmarks.py) need not import Lightning.
"""

from __future__ import annotations

from typing import Any

# Classes that moved after runs naming them were recorded (checkpoints, Hydra records): the old
# path and where the class is now, so that such a run's config still builds and compares.
MOVED_TARGETS = {"cnnlab.data.augment.NormalizeBatch": "cnnlab.models.normalize.NormalizeBatch"}


def with_current_targets(node: Any) -> Any:
    """A config container (dicts and lists) with every ``_target_`` of :data:`MOVED_TARGETS` moved."""
    if isinstance(node, dict):
        return {key: MOVED_TARGETS.get(value, value) if key == "_target_" else with_current_targets(value)
                for key, value in node.items()}
    if isinstance(node, list):
        return [with_current_targets(item) for item in node]
    return node
