"""stablenca: numerical-stability diagnostics for PyTorch losses.

Flagship case: the NCA loss of a ModernNCA homework on Abalone, whose ratio form
goes NaN because ``exp`` silently underflows to 0.0 long before any NaN appears.
"""

from .errors import StableNCAError
from .losses import REGISTRY as LOSSES
from .losses import LossOutput
from .publish import capture, publish

__version__ = "0.1.0"

__all__ = ["LOSSES", "LossOutput", "StableNCAError", "__version__", "capture", "publish"]
