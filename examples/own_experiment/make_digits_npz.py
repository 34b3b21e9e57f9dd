"""scikit-learn's bundled 8x8 digits (1,797 images, offline) as a .npz data file: uint8 pixels 0-255
(the originals are 0-16), the first 1,437 for training and the last 360 for testing.

    python examples/own_experiment/make_digits_npz.py digits.npz
"""

import sys

import numpy as np
from sklearn.datasets import load_digits

digits = load_digits()
images = np.round(digits.images * 255 / 16).astype(np.uint8)
np.savez(sys.argv[1], x_train=images[:1437], y_train=digits.target[:1437], x_test=images[1437:], y_test=digits.target[1437:])
