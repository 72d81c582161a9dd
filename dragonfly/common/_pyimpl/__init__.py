"""Pure-Python twins of the native extensions: the test oracle, and what DRAGONFLY_NO_EXTENSIONS=1 selects."""
