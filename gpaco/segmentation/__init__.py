"""Semantic segmentation on the shared run lifecycle: flags, iteration-based training, inference, evaluation."""
