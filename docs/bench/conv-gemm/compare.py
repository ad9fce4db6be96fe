"""IOCNet's forward and backward on one training batch: the k=3 convolutions as nn.Conv1d modules
(oneDNN) against the model's own forward (GEMMs on unfolded features), same weights, alternated in
one process. Prints the median of each; GFLOP/s counts the k=3 convolutions' FLOPs (forward and
weight gradient: nearly all of the model's) over the whole forward and backward, against the GEMM peak
of the class-specific convolution's unfolded shape (torch.matmul).

    .venv/bin/python docs/bench/conv-gemm/compare.py [--batch 16] [--snippets 256] [--repeats 9]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from copl_dist.method.model import IOCNet


def conv1d_forward(net: IOCNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eqs. 11-13 through the Conv1d modules, on (B, D, T), as IOCNet._forward_conv runs them on a GPU."""
    xc = x.transpose(1, 2)
    half = net.feature_dim // 2
    hidden = torch.relu(net.cs_conv(xc))
    cas = net.cs_classifier(net.cs_dropout(hidden)).transpose(1, 2)
    a_r = torch.sigmoid(net.ca_rgb(xc[:, :half]).squeeze(1))
    a_f = torch.sigmoid(net.ca_flow(xc[:, half:]).squeeze(1))
    return {"cas": cas, "a_ca": (a_r + a_f) / 2, "embedding": hidden.transpose(1, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--snippets", type=int, default=256)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args()
    torch.manual_seed(0)
    d, h = 2048, 512
    net = IOCNet(a.classes, d, h, 0.5).train()
    x = torch.randn(a.batch, a.snippets, d)

    def step(forward) -> None:
        net.zero_grad(set_to_none=True)
        out = forward(x)
        (out["cas"].sum() + out["a_ca"].sum() + out["embedding"].mean()).backward()

    paths = {"Conv1d modules": lambda v: conv1d_forward(net, v), "IOCNet.forward (GEMMs)": net}
    for f in paths.values():
        step(f)
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(a.repeats):
        for name, f in paths.items():
            t0 = time.perf_counter()
            step(f)
            times[name].append(time.perf_counter() - t0)
    rows = a.batch * a.snippets
    # The three k=3 convolutions: forward, and the weight gradient in backward (no input gradient).
    flop = 2 * 2 * rows * 3 * (d * h + 2 * (d // 2) * h)
    mm_a, mm_b = torch.randn(rows, 3 * d), torch.randn(3 * d, h)
    torch.matmul(mm_a, mm_b)
    peak_t = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        torch.matmul(mm_a, mm_b)
        peak_t.append(time.perf_counter() - t0)
    peak = 2 * rows * 3 * d * h / np.median(peak_t) / 1e9
    print(f"batch {a.batch} x {a.snippets} snippets, D {d}, H {h}, torch threads {torch.get_num_threads()}, "
          f"median of {a.repeats}")
    print(f"{'path':<24} {'fwd+bwd ms':>10} {'GFLOP/s':>17} {'of GEMM peak':>13}")
    base = np.median(times["Conv1d modules"])
    for name, ts in times.items():
        med = float(np.median(ts))
        print(f"{name:<24} {med * 1000:>10.1f} {flop / med / 1e9:>17.1f} {flop / med / 1e9 / peak:>12.1%}"
              + ("" if name == "Conv1d modules" else f"   {base / med:.2f}x"))
    print(f"{'GEMM peak (matmul)':<24} {'':>10} {peak:>17.1f}")


if __name__ == "__main__":
    main()
