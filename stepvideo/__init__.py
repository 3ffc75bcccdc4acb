"""stepvideo: train, evaluate and ship Step-Video-T2V-class text-to-video models."""

__version__ = "0.1.0"
