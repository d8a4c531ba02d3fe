"""guided-diffusion: classifier-guided diffusion (ADM, ADM-G), a tested drop-in for OpenAI's code."""

__version__ = "0.1.0"
