#!/usr/bin/env python
"""Write the image-level class counts of a segmentation split, the --class-counts file of the
ceco, cecol and rr methods: `python tools/class_counts_seg.py --dataset ade20k
--data-root data/ade/ADEChallengeData2016 --out stats/ade20k_image_label_stats.txt`.
"""
from gpaco.segmentation.class_counts import cli

if __name__ == "__main__":
    cli()
