"""For your own test suite: hypothesis strategies (:mod:`.strategies`) and the pytest plugin
(:mod:`.pytest_plugin`, registered through the ``pytest11`` entry point, fixture ``stablenca_check``).

Nothing is imported here, so loading the plugin does not pay for torch or hypothesis.
"""
