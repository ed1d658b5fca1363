"""arlib: the reference implementations behind the book *Autoregressive Models, Executable*.

Each module implements one method and names the paper and equation it follows.
"""

from arlib.env import pick_device, seed_everything, setup

__version__ = "0.1.0"
__all__ = ["setup", "pick_device", "seed_everything", "__version__"]
