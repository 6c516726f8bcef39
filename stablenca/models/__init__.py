"""The two encoders of the story: TALENT's ModernNCA (ported) and the student's SeedNCA."""

from .embeddings import PLREmbeddings
from .modern_nca import ModernNCA
from .seed_nca import SeedNCA

__all__ = ["ModernNCA", "PLREmbeddings", "SeedNCA"]
