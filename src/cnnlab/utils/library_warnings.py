"""Warnings from the libraries underneath that tell a cnnlab user nothing they can act on."""

from __future__ import annotations

import re
import warnings


def ignore_unactionable_library_warnings() -> None:
    """Hide the library warnings listed here, each matched by its category, message and module.

    Each is addressed to another library's developers and shows on every run; matched this
    narrowly, the same warning raised anywhere else (in the user's own code, say) still shows.
    """
    # Lightning 2.6 builds torch's LeafSpec, which torch 2.15 deprecates: once per fit, test and
    # sanity check, from Lightning's own module.
    warnings.filterwarnings("ignore", message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
                            category=FutureWarning, module=re.escape("lightning.pytorch.utilities._pytree"))
    # Lightning's model summary has no entry for the mixed precisions and says its size estimate
    # "will not be accurate. Using 32 bits instead" - which is exact: under 16-mixed and bf16-mixed
    # the weights stay float32 (only the computation runs in 16 bits).
    warnings.filterwarnings("ignore", message=r"Precision (bf)?16-mixed is not supported by the model summary\.",
                            category=UserWarning, module=re.escape("lightning.pytorch.utilities.model_summary.model_summary"))
