"""Stable Diffusion parts in Jittor, one architecture per file; attribute names = diffusers keys."""
