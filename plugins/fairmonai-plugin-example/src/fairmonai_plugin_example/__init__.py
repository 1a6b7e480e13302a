"""Example fairmonai plugin package.

Nothing here is imported by fairmonai directly: the entry points in ``pyproject.toml`` tell
``fairmonai.registry`` which names this package provides, and each module is imported only when a
plugin of it is first used.
"""

from __future__ import annotations

__version__ = "0.1.0"
