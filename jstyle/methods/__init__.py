"""Style-transfer methods built on a loaded `StableDiffusion` (DDIM inversion, StyleID, ...).

Each method is a submodule (`jstyle.methods.styleid`, ...); importing this package imports nothing else.
"""
