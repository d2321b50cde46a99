"""samclip_client: a small Python client for samclip-serve, and the `samclip label` CLI (images -> COCO JSON).

Needs only httpx, numpy, pycocotools and tqdm (no server dependencies). See client.py for the API and cli.py
for the labelling command.
"""

from samclip_client.client import AsyncClient, Client
from samclip_client.errors import SamclipError
from samclip_client.images import ImageData, as_image, sha256_hex
from samclip_client.results import (
    ClassifyResult,
    EmbedResult,
    ImageInfo,
    LabelScore,
    Mask,
    MasksResult,
    PromptResult,
    RefineResult,
)
from samclip_client.retry import Retry

__all__ = [
    "AsyncClient",
    "ClassifyResult",
    "Client",
    "EmbedResult",
    "ImageData",
    "ImageInfo",
    "LabelScore",
    "Mask",
    "MasksResult",
    "PromptResult",
    "RefineResult",
    "Retry",
    "SamclipError",
    "as_image",
    "sha256_hex",
]
__version__ = "0.1.0"
