"""Which reduced-precision variant a runtime runs (manifest.variants, written by `python -m model_export optimize`).

`wanted` (setting `variant`): "auto" or None picks, for the runtime, the variant whose parity gates passed with
the lowest rank (optimize ranks: int8 with int8 attention 0, int8 1, bf16 2); "none" runs the plain fp32 graphs;
any other string names a variant, which then runs whatever runtime it was made for (an explicit choice wins).
One name applies to every graph that has it (parity was measured with that variant's graphs swapped in
together); graphs without it run their plain graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from samclip_bundle.manifest import Manifest, Variant


class VariantError(ValueError):
    """An explicitly named variant is not in the manifest."""


@dataclass(frozen=True)
class VariantChoice:
    """name: the variant (None = plain graphs); entries: graph -> its entry, for graphs that have it;
    reason: one line saying why (shown in /info)."""

    name: str | None
    entries: dict[str, Variant] = field(default_factory=dict)
    reason: str = ""

    def file(self, manifest: Manifest, graph: str) -> str:
        """The file `graph` runs from: its variant's file, else the plain graph's."""
        entry = self.entries.get(graph)
        return entry.file if entry is not None else manifest.graphs[graph].file


def passing_variants(manifest: Manifest, runtime: str) -> list[Variant]:
    """Entries made for `runtime` whose parity passed, best (lowest rank, then name) first; one per name."""
    seen: dict[str, Variant] = {}
    for entries in manifest.variants.values():
        for entry in entries:
            if runtime in entry.runtimes and entry.parity.passed and entry.name not in seen:
                seen[entry.name] = entry
    return sorted(seen.values(), key=lambda v: (v.rank, v.name))


def choose_variant(manifest: Manifest, runtime: str, wanted: str | None = "auto") -> VariantChoice:
    """The variant `runtime` ("openvino", "onnxruntime", ...) runs for setting `wanted` (module docstring)."""
    wanted = (wanted or "auto").strip()
    if wanted == "none":
        return VariantChoice(None, reason="variant=none: the plain fp32 graphs")
    if wanted == "auto":
        best = passing_variants(manifest, runtime)
        if not best:
            return VariantChoice(None, reason=f"the bundle has no variant for {runtime} whose parity passed")
        name, why = (
            best[0].name,
            f"best variant for {runtime} whose parity gates passed (rank {best[0].rank})",
        )
    else:
        name, why = wanted, "asked for by name"
    entries = {g: e for g, es in manifest.variants.items() for e in es if e.name == name}
    if not entries:
        have = sorted({e.name for es in manifest.variants.values() for e in es})
        raise VariantError(
            f"variant {name!r} is not in the bundle's manifest (has: {', '.join(have) or 'none'})"
        )
    return VariantChoice(name, entries, f"variant {name}: {why}; graphs {', '.join(sorted(entries))}")
