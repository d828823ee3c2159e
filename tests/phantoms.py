"""The phantom ViT block materialised: the reference the compact block is tested against."""

from __future__ import annotations

import dataclasses

from sigma_core.planning import Plan


def literal_phantoms(plan: Plan) -> Plan:
    """The plan with every phantom block's N zero-input tokens materialised (no bias): the
    sequence SIGMA's packer builds, token for token. Costs N tokens a reference."""
    segments, start = [], 0
    for seg in plan.segments:
        if seg.kind == "phantom":
            seg = dataclasses.replace(seg, length=seg.phantom_tokens + 2)
        segments.append(dataclasses.replace(seg, start=start))
        start += seg.length
    return dataclasses.replace(plan, segments=segments)
