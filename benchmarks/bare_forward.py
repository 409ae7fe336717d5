"""The floor: a bare forward pass over the data, nothing measured.

Streams ``x`` from the same ``.npz`` file that ``nrc analyze`` reads (memory-mapped, one copied
batch at a time, the same batch size), runs the model under ``torch.inference_mode`` and throws the
output away (on ``--device``, the CPU by default; reading one element of each output keeps a GPU
in step, as ``nrc`` reading its per-batch error does). Writes the in-process timings to ``--json``.

    python benchmarks/bare_forward.py --factory mlp --kwargs '{"in_dim": 32}' \\
        --ckpt model.safetensors --data data.npz --n 100000 --json out.json
"""

from __future__ import annotations

import time

import common
import torch


def main() -> None:
    ap = common.method_parser(__doc__, "where to write timings")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    args = ap.parse_args()
    device = torch.device(args.device)

    t0 = time.perf_counter()
    model = common.load_model(args.factory, args.kwargs, args.ckpt).to(device)
    t_load = time.perf_counter() - t0
    seen = 0
    checksum = 0.0
    t1 = time.perf_counter()
    with torch.inference_mode():
        for x, _ in common.batches(args.data, args.n, args.batch_size, with_y=False):
            out = model(x.to(device))
            checksum += float(out[0, 0])  # keep the result alive; costs nothing
            seen += x.shape[0]
    t_pass = time.perf_counter() - t1
    common.write_json(
        args.json,
        {
            "n_samples": seen,
            "load_s": t_load,
            "pass_s": t_pass,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "checksum": checksum,
        },
    )


if __name__ == "__main__":
    main()
