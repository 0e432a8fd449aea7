"""What `edge serve` decides before it binds a socket: the profile, threads, slots, context, and
whether the model fits the device at all.

The profile is `--profile` when given, else the one `profiles.detect` finds on this machine (its memory
budget then follows the machine's RAM or a container's limit). Flags win over the profile's
defaults. The planner (`profiles.plan.planner`, the same one `edge-quantize plan` runs) reads only the GGUF
header: a model that does not fit is refused with the numbers and a way out (DoesNotFitError, exit
code 5) unless `--force`; with no `--ctx`, the largest context that fits is chosen, up to the
model's own and the profile's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from edge.config import Settings


@dataclass(frozen=True)
class Fit:
    settings: Settings
    profile: str
    reasons: tuple[str, ...]


def _profile_and_budget(settings: Settings, root: Path):
    from profiles.detect import detect
    from profiles.profile import get_profile

    if settings.profile:
        profile = get_profile(settings.profile)
        return profile, profile.budget_bytes, profile.runtime.threads, f"profile {profile.name} (--profile)"
    found = detect(root)
    return found.profile, found.budget_bytes, found.threads, f"profile {found.profile.name} (detected)"


CACHE_RAM_CAP = 2 << 30  # bytes: four 700-token prompts of an 8B model take ~0.4 GiB


def fit_model(settings: Settings, model_path: Path, *, force: bool = False, root: Path = Path("/")) -> Fit:
    """Fill threads/parallel/ctx from the profile and check the model fits (GGUF files only)."""
    from profiles.plan.planner import estimate, largest_context
    from profiles.plan.shape import read_model_shape

    profile, budget, threads, why = _profile_and_budget(settings, root)
    settings = settings.with_(
        threads=settings.threads or threads, parallel=settings.parallel or profile.runtime.parallel
    )
    reasons = [why]
    if not str(model_path).endswith(".gguf") or not Path(model_path).is_file():
        return Fit(settings, profile.name, tuple(reasons))
    shape = read_model_shape(Path(model_path))
    kw = dict(budget_bytes=budget, n_parallel=settings.parallel)
    cap = min(shape.n_ctx_train, profile.runtime.context)
    ctx = settings.ctx or largest_context(shape, "AS_IS", profile, cap, **kw) or min(cap, 2048)
    est = estimate(shape, "AS_IS", ctx, profile, **kw)
    if not est.fits:
        refusal = _refusal(shape, profile, ctx, est, kw)
        if not force:
            raise refusal
        print(f"edge: warning: --force: {refusal.message}", file=sys.stderr, flush=True)
    reasons.append(
        f"context {ctx} per slot x {settings.parallel}: {est.memory_bytes / 2**30:.2f} GiB "
        f"of a {est.budget_bytes / 2**30:.2f} GiB budget"
    )
    cache_ram = settings.cache_ram
    if cache_ram is None:  # the prompt cache takes half of what the model leaves of the budget
        cache_ram = min(max(0, est.budget_bytes - est.memory_bytes) // 2, CACHE_RAM_CAP) >> 20
    reasons.append(f"prompt cache up to {cache_ram} MiB" if cache_ram else "prompt cache off")
    return Fit(settings.with_(ctx=ctx, cache_ram=cache_ram), profile.name, tuple(reasons))


def _refusal(shape, profile, ctx, est, kw):
    from edge.errors import DoesNotFitError
    from profiles.plan.planner import LADDER, estimate, largest_context

    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    ways = []
    smaller = largest_context(shape, "AS_IS", profile, ctx, **kw)
    if smaller >= 256:
        ways.append(f"--ctx {smaller}")
    lighter = next((t for t in LADDER if estimate(shape, t, ctx, profile, **kw).fits), None)
    if lighter:
        ways.append(f"a smaller quantization such as {lighter} (edge-quantize convert MODEL --to {lighter.lower()})")
    ways.append("--force to load anyway")
    return DoesNotFitError(
        f"{Path(shape.source).name} needs {gib(est.memory_bytes)} at --ctx {ctx} x {kw['n_parallel']} slot(s) "
        f"(weights {gib(est.weights_bytes)}, KV {gib(est.kv_bytes)}, compute {gib(est.compute_bytes)}, "
        f"runtime {gib(est.runtime_bytes)}), "
        f"budget {gib(int(est.budget_bytes / (1 + profile.runtime.headroom)))} on {profile.name} "
        f"(+{profile.runtime.headroom:.0%} headroom); try " + "; ".join(ways)
    )
