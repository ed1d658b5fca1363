"""arlib: the reference implementations behind the book *Autoregressive Models, Executable*.

One sub-package per part of the book: :mod:`arlib.text` (chapters 0-1), :mod:`arlib.decoding`
(chapters 2-3), :mod:`arlib.vision` (chapter 4), :mod:`arlib.speech` (chapter 5), :mod:`arlib.interp`
(chapter 6) and :mod:`arlib.serving` (chapter 7), over a shared core (:mod:`arlib.env`,
:mod:`arlib.train`, :mod:`arlib.checkpoints`, :mod:`arlib.data`). :func:`load` opens any committed checkpoint.
"""

from arlib.env import export_figure, pick_device, seed_everything, setup
from arlib.loader import Loaded, load

__version__ = "0.2.0"
__all__ = ["setup", "pick_device", "seed_everything", "export_figure", "load", "Loaded", "__version__"]
