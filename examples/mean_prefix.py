def mean(values):
    """Return the arithmetic mean of a list of numbers."""
    if not values:
        raise ValueError("mean of an empty list")
    total = 0
    for value in values:
