"""tools/train.py under torchrun where rank 1 is given another --train-list (as when a node
holds another copy of the file): tests/test_distributed.py checks that every rank stops at
once with one error line naming the rank and the file.

Usage: torchrun --nproc_per_node=2 tests/rank_data_worker.py DATA_ROOT OUT_DIR
"""
import os
import sys

from gpaco.classification.train import cli

if __name__ == "__main__":
    root, out = sys.argv[1], sys.argv[2]
    train_list = os.path.join(root, "val.txt" if os.environ["RANK"] == "0" else "val_rank1.txt")
    cli(["--data-root", root, "--train-list", train_list, "--image-size", "32", "--resize-size", "32", "--norm",
         "mnist", "--workers", "0", "--arch", "resnet8", "--aug", "digits", "--method", "ce", "--epochs", "1",
         "--warmup-epochs", "0", "--batch-size", "8", "--print-freq", "0", "--output-dir", out])
