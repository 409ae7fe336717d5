"""In-memory feature-space baseline: what a careful user would write without ``nrc``.

One forward pass with hooks on every Linear/Conv layer; each hook keeps its layer's input, as
float32 when it needs no pooling (2-D Linear inputs, cast exactly later) and averaged over space
(convs) or tokens in float64 otherwise; the batches are concatenated in memory. Then, layer by layer: cast to float64, centre, Σ_Z = Z_cᵀZ_c / N, ``torch.linalg.eigh``,
and every metric in feature space (no N×N matrix), with the formulas of docs/metrics.md. Memory is
N·Σp·4 (or 8, pooled) bytes for the kept features plus one layer's float64 copy.

Writes an ``nrc``-shaped JSON (``summary``, ``layers``) plus per-stage timings to ``--json``.
"""

from __future__ import annotations

import time

import common
import torch

F64 = torch.float64
PROBE_CUTOFF = 1e-6


def layer_row(z: torch.Tensor, y: torch.Tensor, module, k_req: int, model_mse: float) -> dict:
    n, p = z.shape
    k = min(k_req, p)
    z = z.to(F64)
    zc = z - z.mean(dim=0)
    del z
    yc = y - y.mean(dim=0)
    cov_z = zc.T @ zc / n
    cov_zy = zc.T @ yc / n
    cov_y = yc.T @ yc / n
    del zc
    lam, vec = torch.linalg.eigh((cov_z + cov_z.T) / 2)
    lam = lam.flip(0).clamp_min(0.0)
    vec = vec.flip(1)
    total = float(lam.sum())
    fro2 = float((lam * lam).sum())
    fro_y = float(torch.linalg.matrix_norm(cov_y))
    vk = vec[:, :k]
    proj = vk.T @ cov_zy
    head2 = float((lam[:k] * lam[:k]).sum())
    basis, s_w = common.weight_basis(module)
    m = min(k, basis.shape[1])
    keep = (lam >= PROBE_CUTOFF * lam[0]) & (lam > 0)
    pk = vec[:, keep].T @ cov_zy
    explained = float(((pk * pk).sum(dim=1) / lam[keep]).sum())
    probe = max(float(torch.trace(cov_y)) - explained, 0.0) / y.shape[1]
    return {
        "in_dim": p,
        "rank": k,
        "nrc1_noise": float(lam[k:].sum()) / total if total > 0 else None,
        "nrc2_cka": float((cov_zy * cov_zy).sum()) / (fro2**0.5 * fro_y) if total > 0 else None,
        "nrc2_cka_signal": float((proj * proj).sum()) / (head2**0.5 * fro_y) if total > 0 else None,
        "nrc3_alignment": common.principal_alignment(vk[:, :m], basis[:, :m]),
        "nrc4_probe_mse": probe,
        "nrc4_ratio": probe / model_mse if model_mse else None,
        "stable_rank_h": fro2 / float(lam[0]) ** 2 if total > 0 else None,
        "stable_rank_w": common.stable_rank(s_w),
    }


def main() -> None:
    ap = common.method_parser(__doc__, "where to write results and timings")
    args = ap.parse_args()

    t_all = time.perf_counter()
    model = common.load_model(args.factory, args.kwargs, args.ckpt)
    sample = next(common.batches(args.data, 1, 1, with_y=False))[0]
    order = common.weight_modules_in_forward_order(model, sample)
    modules = dict(model.named_modules())
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in order}

    def make_hook(name, module):
        def hook(_m, args_):
            inp = args_[0].detach()
            if isinstance(module, torch.nn.Linear) and inp.ndim == 2:
                feats[name].append(inp.clone())  # float32, cast exactly to float64 later
            else:
                feats[name].append(common.pool(module, inp, F64))  # average in float64

        return hook

    handles = [modules[n].register_forward_pre_hook(make_hook(n, modules[n])) for n in order]
    ys = []
    sse, count = 0.0, 0
    t = time.perf_counter()
    with torch.inference_mode():
        for x, y in common.batches(args.data, args.n, args.batch_size):
            out = model(x)
            d = out.reshape(y.shape).to(F64) - y
            sse += float((d * d).sum())
            count += d.numel()
            ys.append(y)
    for h in handles:
        h.remove()
    pass_s = time.perf_counter() - t

    t = time.perf_counter()
    y = torch.cat(ys)
    del ys
    model_mse = sse / count
    summary = {"n_samples": y.shape[0], "model_mse": model_mse, "target_dim": y.shape[1]}
    summary.update(common.target_summary(y))
    rows = []
    for index, name in enumerate(order, start=1):
        z = torch.cat(feats.pop(name))
        row = {"layer": name, "index": index, "type": type(modules[name]).__name__}
        row.update(layer_row(z, y, modules[name], y.shape[1], model_mse))
        rows.append(row)
        del z
    metrics_s = time.perf_counter() - t
    common.write_json(
        args.json,
        {
            "method": "in-memory feature space",
            "summary": summary,
            "layers": rows,
            "timings": {
                "pass_s": pass_s,
                "metrics_s": metrics_s,
                "total_s": time.perf_counter() - t_all,
            },
            "threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
