"""Do the three impls compute the same function here? Same weights (canonical nn.LSTM layout) into cudnn,
naive and lstmcell; compare logits and every parameter's gradient against cudnn's.

Error = max |a - b| / max |b| per tensor (relative to the tensor's scale, so near-zero entries do not blow
it up), the largest over the logits and all gradients. float32 on CPU agrees to about 1e-7 (tests hold it
to 1e-5); on CUDA cuDNN may use TF32 for its GEMMs, which `lstm-bench check` disables so the comparison is
of the algorithms, not of the precision.
"""

from __future__ import annotations

import torch

from .variants import (IMPLS, Variant, build_model, canonical_names, canonical_state, load_canonical_state,
                       with_impl)

CHECK_SEQS = (("row", None), ("column", None), ("pixel", None), ("patch", 2), ("patch", 4), ("patch", 8),
              ("cnn", None))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def impl_errors(v: Variant, device: torch.device, batch: int = 4, seed: int = 0) -> dict[str, float]:
    """Largest relative error of each impl's logits and gradients against the cudnn impl's."""
    torch.manual_seed(seed)
    # Training mode (cuDNN refuses backward in eval mode); dropout is 0 and BatchNorm sees the same batch in
    # every impl, so all three compute the same function.
    ref = build_model(with_impl(v, "cudnn")).to(device).train()
    state = canonical_state(ref)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    results = {}
    for impl in IMPLS:
        model = build_model(with_impl(v, impl)).to(device).train()
        load_canonical_state(model, state)
        logits = model(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        grads = canonical_grads(model)
        results[impl] = (logits.detach(), grads)
    ref_logits, ref_grads = results["cudnn"]
    return {impl: max([_rel(logits, ref_logits)] + [_rel(grads[k], ref_grads[k]) for k in ref_grads])
            for impl, (logits, grads) in results.items() if impl != "cudnn"}


def canonical_grads(model) -> dict[str, torch.Tensor]:
    """Gradients under nn.LSTM's parameter names (so the three layouts line up)."""
    grads = {f"lstm.{canon}": dict(model.lstm.named_parameters())[local].grad
             for canon, local in canonical_names(model.lstm).items()}
    grads.update({n: p.grad for n, p in model.named_parameters() if not n.startswith("lstm.")})
    return grads


def check(device: torch.device, hidden_size: int = 32, layers=(1, 2, 3)) -> list[dict]:
    """One row per (seq, layers, impl): the largest error of that impl against cudnn."""
    rows = []
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for seq, patch in CHECK_SEQS:
            for n in layers:
                v = Variant(seq=seq, patch_size=patch, hidden_size=hidden_size, num_layers=n, batch_size=4)
                for impl, err in impl_errors(v, device).items():
                    rows.append({"seq": seq if patch is None else f"patch{patch}", "num_layers": n,
                                 "impl": impl, "max_rel_error": err})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return rows
