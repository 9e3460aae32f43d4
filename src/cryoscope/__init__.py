"""cryoscope: single-particle cryo-EM on one differentiable image-formation core."""

__version__ = "0.1.0"
