"""Image classification on the shared run lifecycle: flags, training, the epoch loop, evaluation, reports."""
