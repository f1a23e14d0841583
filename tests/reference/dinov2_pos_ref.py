"""DINOv2's position embeddings as the public challenge checker computed them (checker env, never jstyle's).

The public checker's environment pins transformers==4.47.1 (SiriusNEO/THU-Computer-Graphics @ 53a2ab0,
StyleTransferDiffusion/checker/requirements.txt; Xlucidator/JDiffArtFlow's evaluation/requirements.txt leaves it
unpinned). Transcribed from huggingface/transformers v4.47.1 (the PyPI wheel transformers-4.47.1-py3-none-any.whl),
src/transformers/models/dinov2/modeling_dinov2.py, Dinov2Embeddings.interpolate_pos_encoding: facebook/dinov2-base's
37 x 37 table (image_size 518) is resized bicubically to the input's patch grid (16 x 16 at the checker's 224 px).

    model.embeddings.interpolate_pos_encoding = types.MethodType(interpolate_pos_encoding, model.embeddings)
"""

from __future__ import annotations

import torch
from torch import nn


# transformers v4.47.1, models/dinov2/modeling_dinov2.py::Dinov2Embeddings.interpolate_pos_encoding
# (torch_int(x) is int(x) outside tracing)
def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    num_patches = embeddings.shape[1] - 1
    num_positions = self.position_embeddings.shape[1] - 1

    # always interpolate when tracing to ensure the exported model works for dynamic input shapes
    if not torch.jit.is_tracing() and num_patches == num_positions and height == width:
        return self.position_embeddings

    class_pos_embed = self.position_embeddings[:, :1]
    patch_pos_embed = self.position_embeddings[:, 1:]

    dim = embeddings.shape[-1]

    new_height = height // self.patch_size
    new_width = width // self.patch_size

    sqrt_num_positions = int(num_positions**0.5)
    patch_pos_embed = patch_pos_embed.reshape(1, sqrt_num_positions, sqrt_num_positions, dim)
    patch_pos_embed = patch_pos_embed.permute(0, 3, 1, 2)
    target_dtype = patch_pos_embed.dtype
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.to(torch.float32),
        size=(new_height, new_width),
        mode="bicubic",
        align_corners=False,
    ).to(dtype=target_dtype)

    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)

    return torch.cat((class_pos_embed, patch_pos_embed), dim=1)
