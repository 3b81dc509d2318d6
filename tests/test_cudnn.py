"""cuDNN autotuning: on in CUDA training (static shapes), off with --deterministic and while
segmentation evaluates images of every size. The rule is one function, used by the training
tools and bench/gpu_speed.py alike; the CPU checks the rule and its wiring."""
import torch

from gpaco.engine.lifecycle import TrainingRun
from gpaco.engine.precision import no_cudnn_autotune, use_cudnn_benchmark


def test_the_rule():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert use_cudnn_benchmark(cuda, deterministic=False) is True
    assert use_cudnn_benchmark(cuda, deterministic=True) is False
    assert use_cudnn_benchmark(cpu, deterministic=False) is False


def test_a_training_run_applies_it(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("gpaco.engine.lifecycle.use_cudnn_benchmark",
                        lambda device, *, deterministic: seen.append((device.type, deterministic)) or True)
    before = torch.backends.cudnn.benchmark
    try:
        with TrainingRun(output_dir=str(tmp_path / "run"), dry_run=True):
            assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
    assert seen == [("cpu", False)]


def test_segmentation_evaluation_turns_it_off_and_restores_it():
    from gpaco.data.seg_datasets import SyntheticSegDataset
    from gpaco.data.seg_transforms import SegEvalTransform
    from gpaco.segmentation.inference import evaluate_seg

    states = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            states.append(torch.backends.cudnn.benchmark)
            return torch.zeros(x.shape[0], 3, *x.shape[2:])

    data = SyntheticSegDataset(2, 3, (16, 16), transform=SegEvalTransform(), class_names=["a", "b", "c"])
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        evaluate_seg(Probe(), data, device=torch.device("cpu"), num_classes=3, scale=(16, 16))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
    assert states and not any(states)
    with no_cudnn_autotune():
        assert torch.backends.cudnn.benchmark is False
