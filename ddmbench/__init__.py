"""ddmbench: a reproducible benchmark harness for Decentralized Diffusion Models."""

__version__ = "0.1.0"
