"""The ``pytest11`` entry point's old module, for environments installed before the plugin
moved to :mod:`stablenca.testing.pytest_plugin` (``pip install -e .`` again points the
entry point there; then this module is never loaded and can go).
"""

from .testing.pytest_plugin import assert_stable, stablenca_check  # noqa: F401
