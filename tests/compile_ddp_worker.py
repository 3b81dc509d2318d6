"""Worker for tests/test_compile.py::test_step_is_one_graph_under_ddp: under a process group
(gloo, 2 processes), the PaCo and GPaCo training forward + loss trace as one graph with no
graph break (``torch._dynamo.explain``), shuffle-BN's permutation given by the method's step
(before, its broadcast from rank 0 split PaCo's step into 5 graphs).

Usage: torchrun --nproc_per_node=2 tests/compile_ddp_worker.py OUT_FILE
Rank 0 writes OUT_FILE (JSON): per method, the graph count, break count and break reasons.
"""
from __future__ import annotations

import json
import sys

import torch
import torch._dynamo as dynamo

from gpaco import distributed as gdist
from gpaco.engine.step import FitContext
from gpaco.methods import get_method

B, C = 4, 5


def main(out_file: str) -> None:
    info = gdist.init_distributed(timeout=60.0)
    result = {}
    for name in ("paco", "gpaco"):
        method = get_method(name).for_run()
        torch.manual_seed(0)
        model = method.build_model("resnet8", C, proj_dim=8, queue_size=4 * B * info.world_size,
                                   global_batch=B * info.world_size)
        criterion = method.build_criterion(num_classes=C, class_counts=[9, 7, 5, 3, 1], alpha=0.5, temperature=0.2)
        ctx = FitContext(model=model, criterion=criterion, optimizer=None, method=method, device=torch.device("cpu"),
                         options={"seed": 3}, world_size=info.world_size)
        method.setup(ctx)
        g = torch.Generator().manual_seed(1 + info.rank)
        im_q, im_k = (torch.randn(B, 3, 16, 16, generator=g) for _ in range(2))
        labels = torch.randint(0, C, (B,), generator=g)
        kwargs = {"key_perm": method.key_permutation(ctx, B)} if name == "paco" else {}

        def step(q, k, y):
            return criterion(model(q, k, y, **kwargs), y)

        dynamo.reset()
        explained = dynamo.explain(step)(im_q, im_k, labels)
        result[name] = {"graphs": explained.graph_count, "breaks": explained.graph_break_count,
                        "reasons": [str(r.reason) for r in explained.break_reasons]}
        if kwargs:  # every rank drew the same permutation, without communicating
            perms = gdist.all_gather_nograd(kwargs["key_perm"][None])
            result[name]["same_perm_on_every_rank"] = bool((perms == perms[0]).all())
    if info.rank == 0:
        with open(out_file, "w") as f:
            json.dump(result, f)
    gdist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
