"""The ``unmask`` command line: the top layer, which may import every package; none imports it."""
