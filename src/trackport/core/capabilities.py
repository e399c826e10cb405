"""What a connector can hold, declared once and read by plan, reports and tests.

Every transformation a sink may apply has a kind listed in `transformations`;
the sink counts each occurrence in the run's report under that kind.  Anything
a sink cannot hold and does not transform is a drop, also counted; a drop the
user did not allow makes the exit code 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Capabilities:
    integer_steps: bool = False          # destination takes only integer steps
    keeps_timestamps: bool = True        # per-point wall-clock times kept
    max_key_length: int | None = None
    key_rule: str | None = None          # human text of allowed key characters
    max_param_length: int | None = None
    files: bool = True
    histograms: bool = True
    forks: bool = True
    resumable: bool = True               # a partially written run can be finished
    replayable: bool = False             # read_run may be called again cheaply (no spool needed)
    # series type -> the drop kind its sink counts for a point without a value (it cannot hold
    # one); the pipeline predicts these from the scan, before anything is written
    null_point_drops: dict[str, str] = field(default_factory=dict)
    # kind -> what it means, for every transformation this connector may apply
    transformations: dict[str, str] = field(default_factory=dict)

    def describe(self) -> list[str]:
        lines = []
        if self.integer_steps:
            lines.append("steps: integers only (decimal steps scaled by an exact multiplier)")
        else:
            lines.append("steps: decimal(18,6), kept as they are")
        lines.append("point timestamps: " + ("kept" if self.keeps_timestamps else "NOT kept"))
        if self.max_key_length:
            lines.append(f"keys: at most {self.max_key_length} characters")
        if self.key_rule:
            lines.append(f"key characters: {self.key_rule}")
        if self.max_param_length:
            lines.append(f"param values: at most {self.max_param_length} characters")
        for typ, kind in sorted(self.null_point_drops.items()):
            lines.append(f"{typ} points without a value: NOT kept (drop {kind})")
        for kind, text in sorted(self.transformations.items()):
            lines.append(f"transformation {kind}: {text}")
        return lines
