"""edn: learned image reconstruction with a guaranteed discrepancy stop.

The library is importable without torch loaded; heavy modules import torch themselves.
"""

__version__ = "0.1.0"
