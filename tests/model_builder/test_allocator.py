"""keep_freed_memory(): a training loop stops handing its buffers back to the kernel after every step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from model_builder.allocator import keep_freed_memory

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc")

CHILD = r"""
import json, resource, sys
if sys.argv[1] == "1":
    from model_builder.allocator import keep_freed_memory
    assert keep_freed_memory()
import torch
from model_builder.squeezenet import SqueezeNet, SqueezeNetConfig
torch.manual_seed(0)
torch.set_num_threads(1)
model = SqueezeNet(SqueezeNetConfig(num_classes=10))
opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _page_faults(tuned: bool) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, "1" if tuned else "0"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    faults: int = json.loads(out.stdout.strip().splitlines()[-1])["faults"]
    return faults


@glibc_only
def test_it_applies_once_per_process() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # the second call changes nothing and still says so


@glibc_only
def test_training_steps_stop_faulting_their_buffers_back_in() -> None:
    default, tuned = _page_faults(False), _page_faults(True)
    # Untuned, every step maps its large activation buffers afresh and the kernel zero-fills them again.
    assert default > 1000, default
    assert tuned * 5 < default, (tuned, default)
