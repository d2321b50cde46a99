"""Which graph the SAM decoder runs: variants made for the decoder alone, chosen apart from the others.

A decoder-only variant (a name listed under manifest.variants["sam_decoder"] and under no other graph, e.g.
`fused`: the same function in fewer operations, written by `python -m model_export decoder-variant`) is picked
by setting `decoder_variant` ("auto": the passing one with the lowest rank for the backend's runtime; "none":
the decoder graph that setting `variant` gives; or a name), so it combines with the encoder / CLIP-head
variant `variant` picks (e.g. int8 encoder + fused decoder). `variant` itself never picks a decoder-only one.
"""

from __future__ import annotations

from samclip_bundle.manifest import Manifest
from samclip_bundle.variants import VariantChoice, choose_variant

DECODER = "sam_decoder"


def split_decoder_variants(manifest: Manifest) -> tuple[Manifest, Manifest]:
    """(the manifest without the decoder-only variants, a manifest holding only those)."""
    elsewhere = {e.name for g, es in manifest.variants.items() if g != DECODER for e in es}
    alone = [e for e in manifest.variants.get(DECODER, []) if e.name not in elsewhere]
    rest = {g: [e for e in es if e not in alone] for g, es in manifest.variants.items()}
    return (
        manifest.model_copy(update={"variants": rest}),
        manifest.model_copy(update={"variants": {DECODER: alone}}),
    )


def without_decoder_variants(manifest: Manifest) -> Manifest:
    """What setting `variant` chooses from: every variant except the decoder-only ones."""
    return split_decoder_variants(manifest)[0]


def decoder_choice(choice: VariantChoice, manifest: Manifest, runtime: str, wanted: str) -> VariantChoice:
    """`choice` (from setting `variant`) with the decoder's graph replaced by the decoder-only variant `wanted`
    picks for `runtime` (module docstring). Raises VariantError for a name the manifest lacks."""
    if wanted.strip() == "none":
        return choice
    picked = choose_variant(split_decoder_variants(manifest)[1], runtime, wanted)
    if picked.name is None:
        return choice
    entries = {**choice.entries, DECODER: picked.entries[DECODER]}
    return VariantChoice(choice.name, entries, f"{choice.reason}; SAM decoder: {picked.reason}")
