"""Writes the example data set: two overlapping Gaussian blobs in four dimensions, labelled 0/1.

Deterministic (seeded), so the committed CSVs can be regenerated exactly:
    python3 deploy/examples/data/generate.py
"""
import csv
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))


def rows(n, rng):
    centers = {0: (-1.0, -0.5, 0.0, 0.5), 1: (1.0, 0.5, 0.0, -0.5)}
    for _ in range(n):
        label = rng.randint(0, 1)
        yield [label] + [round(rng.gauss(c, 1.2), 4) for c in centers[label]]


def main():
    rng = random.Random(20261123)
    for split, n in (("train", 400), ("validation", 200)):
        directory = os.path.join(HERE, "blobs", split)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{split}.csv"), "w", newline="") as f:
            csv.writer(f).writerows(rows(n, rng))


if __name__ == "__main__":
    main()
