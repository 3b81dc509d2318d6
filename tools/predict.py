#!/usr/bin/env python
"""Predict images with a trained run: `python tools/predict.py --checkpoint runs/x photos/ [--top-k 3]`.

Class names and top-k probabilities of image files, folders or list files, into predictions.csv
(the code is gpaco/classification/predict_images.py, also the `gpaco-predict` command).
"""
from gpaco.classification.predict_images import cli

if __name__ == "__main__":
    cli()
