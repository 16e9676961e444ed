"""Where bf16 autocast pays: the one check that every stage asks before it turns bf16 on by itself."""

from __future__ import annotations

import torch


def bf16_available() -> bool:
    """Whether bf16 autocast has fast kernels here: on the GPU if there is one, else oneDNN's on the CPU.

    Without them (an older CPU) autocast emulates bf16 and runs slower than fp32, so presets that ask for
    bf16 fall back to fp32 there; an explicit ``--bf16`` flag is obeyed either way.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return not torch.accelerator.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
