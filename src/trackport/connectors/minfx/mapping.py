"""Canonical <-> Minfx mapping: the Neptune 2.x client's (connectors/neptune/mapping.py).

Minfx 0.7.4 bundles neptune-client 1.x as `minfx.neptune_v2` with the same limits
(checked in its code: attributes/atoms/string.py cuts strings at 16,384
characters, attributes/series/string_series.py string-series values at 1,000,
internal/types/utils.py skips ints outside int32 and NaN/inf, file series take
images only, no histograms), so every transformation the Neptune 2.x sink
declares applies unchanged; nothing Minfx-specific is added.  Pure: no SDK, no I/O.
"""

from __future__ import annotations

from trackport.connectors.neptune.mapping import CAPABILITIES_2 as CAPABILITIES
from trackport.connectors.neptune.mapping import SOURCE_CAPABILITIES, TRANSFORMATIONS_2

__all__ = ["CAPABILITIES", "SOURCE_CAPABILITIES", "TRANSFORMATIONS_2"]
