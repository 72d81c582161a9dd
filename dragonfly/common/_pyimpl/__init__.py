"""Pure-Python twins of the native extensions: the test oracle, and the implementation under DRAGONFLY_NO_EXTENSIONS=1."""
