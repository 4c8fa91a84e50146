    return total / len(values)
