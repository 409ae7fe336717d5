"""Naive in-memory baseline: the published measurement method, layer by layer.

Re-implements the method of ``run_measurements.py`` in altayunal/neural-collapse-regression
(``compute_nrc_mlp`` / ``compute_nrc_resnet`` and ``compute_cka_core``), written from its
description, not copied:

* for **each weight layer separately**, one full pass over the data with a forward hook that keeps
  the layer's input; the batches are concatenated in memory (conv inputs are kept whole, then
  averaged over space after concatenation, as the published ResNet path does);
* Σ_H = H_cᵀH_c / N and its SVD; NRC1 = |1 − tr(V_k Σ_H V_kᵀ) / tr Σ_H|, stable rank of Σ_H;
* CKA through N×N Gram matrices K = HHᵀ, L = YYᵀ, centred with the centring matrix
  C = I − 11ᵀ/N (Kc = C K C) and HSIC(K, L) = tr(Kc Lc), as published (``--cka-impl published``,
  O(N³)); ``--cka-impl fast`` centres with row/column means and takes tr(AB) = Σ A∘B instead
  (O(N²·p), same value);
* NRC3 = mean singular value of V_kᵀB_k (B: right singular vectors of W, left ones of the
  reshaped conv weight), stable rank of W;
* probe: least squares through ``pinv(·, rtol=1e-3)``.

Differences from the published code, all needed to compare numbers with ``nrc``
(docs/metrics.md, last section):

* features and targets are cast to **float64** after capture (the published code computes in
  float32), so that metrics can be compared to 1e-6;
* CKA uses **all** feature columns (the published ``compute_cka_core`` keeps only the first t);
  ``--published-extras`` also reports the truncated value as ``nrc2_cka_truncated``;
* the probe is **affine** (centred H); ``--published-extras`` also reports the published
  no-intercept probe on uncentred H as ``nrc4_probe_mse_uncentred``;
* every sample is used once, in file order (the published loader shuffles and drops the last
  partial batch); every Linear/Conv layer is measured (the published ResNet path skips the stem
  and the downsample convs), in forward order, with rank k = min(t, p).

Writes an ``nrc``-shaped JSON (``summary``, ``layers``) plus per-stage timings to ``--json``.
"""

from __future__ import annotations

import time

import common
import torch
from torch import nn

F64 = torch.float64


def collect_layer(model, module, data, n, batch_size, want_mse):
    """One full data pass keeping ``module``'s input (the published hook), plus targets."""
    store: dict = {}

    def hook(_m, inp, _out):
        store["h"] = inp[0].detach().clone()

    handle = module.register_forward_hook(hook)
    all_h, all_y = [], []
    sse, count = 0.0, 0
    try:
        with torch.no_grad():
            for x, y in common.batches(data, n, batch_size):
                out = model(x)
                all_h.append(store.pop("h"))
                all_y.append(y)
                if want_mse:
                    d = out.reshape(y.shape).to(F64) - y
                    sse += float((d * d).sum())
                    count += d.numel()
    finally:
        handle.remove()
    h_raw = torch.cat(all_h, dim=0)
    del all_h
    y = torch.cat(all_y, dim=0)
    if isinstance(module, nn.Linear):
        h = h_raw if h_raw.ndim == 2 else h_raw.mean(dim=tuple(range(1, h_raw.ndim - 1)))
    else:
        h = h_raw.mean(dim=tuple(range(2, h_raw.ndim)))  # GAP after concatenation
    del h_raw
    return h, y, (sse / count if want_mse else None)


def cka_published(h1: torch.Tensor, h2: torch.Tensor) -> float:
    """Linear CKA through centred N×N Grams, as ``compute_cka_core`` (without truncation)."""
    n = h1.shape[0]
    eps = 1e-12
    centering = torch.eye(n, dtype=F64) - torch.ones(n, n, dtype=F64) / n
    k = h1 @ h1.T
    lm = h2 @ h2.T
    kc = centering @ k @ centering
    lc = centering @ lm @ centering
    del k, lm, centering
    hsic_kl = torch.trace(kc @ lc)
    hsic_kk = torch.trace(kc @ kc)
    hsic_ll = torch.trace(lc @ lc)
    denom = torch.sqrt(hsic_kk * hsic_ll + eps)
    if denom <= eps:
        return 0.0
    return float(hsic_kl / denom)


def cka_fast(h1: torch.Tensor, h2: torch.Tensor) -> float:
    """The same value with O(N²) centring: Kc = K − row means − column means + grand mean."""
    eps = 1e-12

    def centred_gram(h):
        g = h @ h.T
        r = g.mean(dim=0)
        g -= r[None, :]
        g -= r[:, None]
        g += r.mean()
        return g

    kc = centred_gram(h1)
    lc = centred_gram(h2)
    hsic_kl = (kc * lc).sum()
    hsic_kk = (kc * kc).sum()
    hsic_ll = (lc * lc).sum()
    denom = torch.sqrt(hsic_kk * hsic_ll + eps)
    if denom <= eps:
        return 0.0
    return float(hsic_kl / denom)


def main() -> None:
    ap = common.method_parser(__doc__, "where to write results and timings")
    ap.add_argument("--cka-impl", choices=("published", "fast"), default="published")
    ap.add_argument(
        "--published-extras",
        action="store_true",
        help="also compute the published truncated CKA and the no-intercept probe",
    )
    args = ap.parse_args()

    cka = cka_published if args.cka_impl == "published" else cka_fast
    t_all = time.perf_counter()
    model = common.load_model(args.factory, args.kwargs, args.ckpt)
    sample = next(common.batches(args.data, 1, 1, with_y=False))[0]
    order = common.weight_modules_in_forward_order(model, sample)
    modules = dict(model.named_modules())
    timings = {"pass_s": 0.0, "cov_svd_s": 0.0, "cka_s": 0.0, "weight_s": 0.0, "probe_s": 0.0}
    extras_s = 0.0
    rows = []
    summary: dict = {}
    for index, name in enumerate(order, start=1):
        module = modules[name]
        t = time.perf_counter()
        h, y, mse = collect_layer(model, module, args.data, args.n, args.batch_size, index == 1)
        timings["pass_s"] += time.perf_counter() - t
        if index == 1:
            summary = {"n_samples": h.shape[0], "model_mse": mse, "target_dim": y.shape[1]}
            summary.update(common.target_summary(y))
        n, p = h.shape
        k = min(y.shape[1], p)

        t = time.perf_counter()
        h = h.to(F64)
        hc = h - h.mean(dim=0)
        yc = y - y.mean(dim=0)
        sh = hc.T @ hc / n
        _, s_h, v_h = torch.linalg.svd(sh, full_matrices=False)
        vk = v_h[:k]
        nrc1 = abs(1.0 - float(torch.trace(vk @ (sh @ vk.T)) / torch.trace(sh)))
        sr_h = common.stable_rank(s_h)
        timings["cov_svd_s"] += time.perf_counter() - t

        t = time.perf_counter()
        cka_val = cka(h, y)
        timings["cka_s"] += time.perf_counter() - t

        t = time.perf_counter()
        basis, s_w = common.weight_basis(module)
        m = min(k, basis.shape[1])
        align = common.principal_alignment(vk[:m].T, basis[:, :m])
        sr_w = common.stable_rank(s_w)
        timings["weight_s"] += time.perf_counter() - t

        t = time.perf_counter()
        coef = torch.linalg.pinv(hc, rtol=1e-3) @ yc
        probe = float(((hc @ coef - yc) ** 2).mean())
        del coef
        timings["probe_s"] += time.perf_counter() - t

        row = {
            "layer": name,
            "index": index,
            "type": type(module).__name__,
            "in_dim": p,
            "rank": k,
            "nrc1_noise": nrc1,
            "nrc2_cka": cka_val,
            "nrc3_alignment": align,
            "nrc4_probe_mse": probe,
            "nrc4_ratio": probe / summary["model_mse"] if summary["model_mse"] else None,
            "stable_rank_h": sr_h,
            "stable_rank_w": sr_w,
        }
        if args.published_extras:
            t = time.perf_counter()
            row["nrc2_cka_truncated"] = cka(h[:, : y.shape[1]], y)
            coef = torch.linalg.pinv(h, rtol=1e-3) @ yc
            row["nrc4_probe_mse_uncentred"] = float(((h @ coef - yc) ** 2).mean())
            extras_s += time.perf_counter() - t
        rows.append(row)
        del h, hc, y, yc, sh
        print(f"layer {index}/{len(order)} {name} p={p} done", flush=True)

    timings["total_s"] = time.perf_counter() - t_all
    timings["extras_s"] = extras_s
    common.write_json(
        args.json,
        {
            "method": f"naive ({args.cka_impl} CKA)",
            "summary": summary,
            "layers": rows,
            "timings": timings,
            "threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
