"""A small deterministic fake generator and cohort for the synthesiser's tests, and their torchrun entry point.

``python -m torch.distributed.run --nproc_per_node=W tests/synthesis_worker.py OUT_DIR`` makes the synthetic
set of :func:`small_cohort` with :func:`fake_generate` on W gloo processes; ``python tests/synthesis_worker.py
OUT_DIR N`` makes it in one process that is SIGKILLed in the middle of its N-th NIfTI write.
"""

from __future__ import annotations

import sys

import numpy as np

from fairmonai.cohort import Cohort, GroupSpec, Record
from fairmonai.engines.synthesis import SampleRequest, SampleResult, Synthesizer

SPEC = GroupSpec(attributes=("sex", "age"), bins={"age": (60, 70)}, categories={"sex": ("F", "M")})
#: (sex, age) -> real records: F <60 is the largest group (5); M >=70 has no real subject
SIZES = {("F", 50): 5, ("F", 65): 2, ("F", 75): 1, ("M", 45): 3, ("M", 62): 4}
SIZE = 8


def small_cohort(spec: GroupSpec = SPEC) -> Cohort:
    """14 in-memory records over 5 of the 6 sex x age groups (no files: the plan needs none)."""
    records = []
    for (sex, age), n in SIZES.items():
        for i in range(n):
            records.append(
                Record(
                    id=f"R{sex}{age}-{i}",
                    image=f"/nowhere/{sex}{age}-{i}",
                    label=i % 2,
                    attributes={"sex": sex, "age": age + i * 0.5},
                )
            )
    return Cohort(records, spec)


def fake_generate(requests: list[SampleRequest], size: int = SIZE) -> list[SampleResult]:
    """[ED, ES, ED] images and masks drawn from each request's own seed alone (so batching cannot matter)."""
    out = []
    for q in requests:
        rng = np.random.default_rng(q.seed)
        image = rng.random((3, size, size), dtype=np.float32) + 0.1
        image[2] = image[0]
        mask = rng.integers(0, 4, (3, size, size)).astype(np.uint8)
        mask[2] = mask[0]
        out.append(SampleResult(image=image, mask=mask, spacing=(1.8, 1.8, 8.0)))
    return out


def synthesizer(out_dir: str, **kw) -> Synthesizer:
    """The synthesiser every test and the worker run: the largest-group target of :func:`small_cohort`."""
    settings = {
        "seed": 7,
        "batch_size": 2,
        "layout": "cine",
        "generator_name": "fake",
        "generator_version": "0.1.0",
        "progress": False,
        **kw,
    }
    return Synthesizer(small_cohort(), SPEC, "largest", out_dir, fake_generate, **settings)


def kill_at_write(n: int) -> None:
    """SIGKILL this process in the middle of the ``n``-th NIfTI write (a half-written item folder is left)."""
    import os
    import signal

    from fairmonai.engines import synthesis

    write, calls = synthesis.write_synthetic_nifti, []

    def dying(*args, **kwargs):
        record = write(*args, **kwargs)
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return record

    synthesis.write_synthetic_nifti = dying


def main(out_dir: str, kill_at: str | None = None) -> None:
    """Under torchrun: one rank of the synthesis; with ``kill_at``: one process killed at that NIfTI write."""
    if kill_at is not None:
        kill_at_write(int(kill_at))
        synthesizer(out_dir).run()
        return
    from fairmonai.engines.distributed import init_distributed, shutdown_distributed

    init_distributed("gloo")
    synthesizer(out_dir).run()
    shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
