"""PyTorch modules of SAM-CLIP (needs torch)."""

from .clip_head import ClipHead
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .samclip import SamClip
from .text_encoder import TextEncoder

__all__ = ["ClipHead", "ImageEncoderViT", "MaskDecoder", "PromptEncoder", "SamClip", "TextEncoder"]
