"""Worker for tests/test_kd_methods.py::test_class_stats_over_processes_equal_one_process: one
epoch of ``gkl_kd`` steps on a fixed global batch of 16, as 1 process or 2 under torchrun.

Usage: [torchrun --nproc_per_node=W] tests/kd_stats_worker.py TEACHER_FILE OUT_FILE

Every process takes its rank's 16 / W samples of each step; the teacher is read from
TEACHER_FILE through ``--teacher-weights``. Mid-epoch (after step 2) the method's state is
saved and loaded into a fresh copy of the method on every rank: each rank must get its own
share of the epoch's accumulator back. Rank 0 writes OUT_FILE with the class matrix after
the epoch and whether every rank restored its accumulator exactly.
"""
from __future__ import annotations

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from gpaco import distributed as gdist
from gpaco.engine.step import Batch, FitContext
from gpaco.methods import get_method

GLOBAL_BATCH, NUM_CLASSES, STEPS = 16, 5, 4


def main(teacher_file: str, out_file: str) -> None:
    info = gdist.init_distributed(timeout=60.0)
    rank, world = info.rank, info.world_size
    local = GLOBAL_BATCH // world
    mine = slice(rank * local, (rank + 1) * local)
    options = {"teacher_weights": teacher_file, "teacher_arch": "resnet8", "num_classes": NUM_CLASSES,
               "dataset": "imagenet_lt", "arch": "resnet8", "kd_gi": True, "kd_t2": 2.0}

    def context(method):
        torch.manual_seed(0)
        student = method.build_model("resnet8", NUM_CLASSES)
        net = DistributedDataParallel(student) if info.distributed else student
        return FitContext(model=net, module=student, criterion=method.build_criterion(), method=method,
                          optimizer=torch.optim.SGD(student.parameters(), lr=0.1), device=torch.device("cpu"),
                          options=options, world_size=world)

    method = get_method("gkl_kd").for_run()
    ctx = context(method)
    method.setup(ctx)
    data = torch.Generator().manual_seed(7)
    restored = None
    for step in range(STEPS):
        images = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=data)[mine]
        labels = torch.randint(0, NUM_CLASSES, (GLOBAL_BATCH,), generator=data)[mine]
        out = method.training_step(ctx, Batch(images, labels))
        ctx.optimizer.zero_grad()
        out.loss.backward()
        ctx.optimizer.step()
        if step == 1:  # a mid-epoch checkpoint (every rank saves together, as the engine does)
            state = method.state_dict()
            fresh = get_method("gkl_kd").for_run()
            fresh.setup(context(fresh))
            fresh.load_state_dict(state)
            restored = torch.equal(fresh.stats.accumulator, method.stats.accumulator) and \
                torch.equal(fresh.stats.matrix, method.stats.matrix)
    method.on_train_epoch_end(ctx)
    flags = torch.tensor([float(restored)])
    if info.distributed:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
    if rank == 0:
        torch.save({"world_size": world, "matrix": method.stats.matrix.clone(), "restored": bool(flags.item())},
                   out_file)
    gdist.barrier()
    gdist.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
