import os


def read_lines(path):
    """Return the non-empty lines of a text file."""
    with open(path) as handle:
        return [line.rstrip() for line in handle if line.strip()]


def count_words(lines):
    counts = {}
    for line in lines:
        for word in line.split():
            counts[word] = counts.get(word, 0) + 1
    return counts
