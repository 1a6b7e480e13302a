"""``python tests/kill_at_write.py ARGS``: ``python -m monai.bundle ARGS`` killed half-way through a write.

``torch.save`` is replaced so that the ``KILL_NTH``-th (default first) save to a file whose name contains
``KILL_AT`` writes half of its bytes and then ends the process with ``os._exit(17)``: no clean-up, no
``finally``, as a SIGKILL or a power cut would leave it. The bundle tests use it to check that nothing
is lost and that a rerun resumes.
"""

import io
import os
import runpy
import sys

import torch

TARGET, NTH = os.environ["KILL_AT"], int(os.environ.get("KILL_NTH", "1"))
_real_save, _seen = torch.save, [0]


def _save(obj, f, *args, **kwargs):
    name = os.path.basename(str(getattr(f, "name", f)))
    if TARGET in name:
        _seen[0] += 1
        if _seen[0] == NTH:
            buffer = io.BytesIO()
            _real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
            if hasattr(f, "write"):
                f.write(data)
                f.flush()
            else:
                with open(f, "wb") as out:
                    out.write(data)
            os._exit(17)
    return _real_save(obj, f, *args, **kwargs)


torch.save = _save
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
