"""What `edge serve` decides before it binds a socket: the profile, its memory budget, threads, slots,
and for each model the context it is loaded with and whether it fits the device at all.

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
from typing import TYPE_CHECKING

from edge.config import Settings

if TYPE_CHECKING:
    from profiles.profile import Profile


@dataclass(frozen=True)
class Fit:
    settings: Settings
    profile: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Budget:
    """The memory a server's models share, decided once at start.

    `budget_bytes` is the planner's budget (profile or detection, or --memory-budget); the planner
    keeps `headroom` of it free and counts the serving process once, so `model_bytes` is what the
    loaded models together may take (the sum of their `ModelNeed.bytes`)."""

    profile: Profile
    budget_bytes: int
    threads: int
    why: str
    force: bool = False

    @property
    def model_bytes(self) -> int:
        from profiles.plan.planner import EDGE_LLAMA_CPP

        usable = int(self.budget_bytes / (1 + self.profile.runtime.headroom))
        return max(0, usable - EDGE_LLAMA_CPP.process_bytes)


@dataclass(frozen=True)
class ModelNeed:
    """What one model takes once loaded: its context per slot and its share of the budget."""

    n_ctx: int | None
    bytes: int


def server_budget(settings: Settings, *, force: bool = False, root: Path = Path("/")) -> Budget:
    """The profile (given or detected) and its budget; --memory-budget replaces the budget."""
    from profiles.detect import detect
    from profiles.profile import get_profile

    if settings.profile:
        profile = get_profile(settings.profile)
        budget, threads, why = profile.budget_bytes, profile.runtime.threads, f"profile {profile.name} (--profile)"
    else:
        found = detect(root)
        profile, budget, threads = found.profile, found.budget_bytes, found.threads
        why = f"profile {profile.name} (detected)"
    if settings.memory_budget is not None:
        budget, why = settings.memory_budget, f"{why}, memory budget {settings.memory_budget / 2**30:.2f} GiB (given)"
    return Budget(profile, budget, threads, why, force)


def server_settings(settings: Settings, budget: Budget) -> Settings:
    """Threads and slots from the profile where no flag gave them."""
    return settings.with_(
        threads=settings.threads or budget.threads, parallel=settings.parallel or budget.profile.runtime.parallel
    )


def model_need(settings: Settings, budget: Budget, model_path: Path, size_bytes: int = 0) -> ModelNeed:
    """The context a model is loaded with (--ctx, else the largest that fits alone, up to the model's
    own and the profile's) and the memory it then takes, from the GGUF header alone. Raises
    DoesNotFitError with the planner's numbers when it cannot fit even alone (unless `budget.force`).
    A file the planner cannot read (an ONNX folder) counts as its size on disk."""
    from profiles.plan.planner import EDGE_LLAMA_CPP, estimate, largest_context
    from profiles.plan.shape import read_model_shape

    if not str(model_path).endswith(".gguf") or not Path(model_path).is_file():
        return ModelNeed(settings.ctx, size_bytes)
    profile, parallel = budget.profile, settings.parallel or 1
    shape = read_model_shape(Path(model_path))
    kw: dict = dict(budget_bytes=budget.budget_bytes, n_parallel=parallel)
    cap = min(shape.n_ctx_train, profile.runtime.context)
    ctx = settings.ctx or largest_context(shape, "AS_IS", profile, cap, **kw) or min(cap, 2048)
    est = estimate(shape, "AS_IS", ctx, profile, **kw)
    if not est.fits:
        refusal = _refusal(shape, profile, ctx, est, kw)
        if not budget.force:
            raise refusal
        print(f"edge: warning: --force: {refusal.message}", file=sys.stderr, flush=True)
    # the prompt cache's budget is part of what the model takes (edge.engine.prompt_cache)
    return ModelNeed(ctx, est.memory_bytes - EDGE_LLAMA_CPP.process_bytes + (settings.cache_ram << 20))


def fit_model(settings: Settings, model_path: Path, *, force: bool = False, root: Path = Path("/")) -> Fit:
    """Fill threads/parallel/ctx from the profile and check the model fits (GGUF files only)."""
    from profiles.plan.planner import EDGE_LLAMA_CPP

    budget = server_budget(settings, force=force, root=root)
    settings = server_settings(settings, budget)
    reasons = [budget.why]
    if not str(model_path).endswith(".gguf") or not Path(model_path).is_file():
        return Fit(settings, budget.profile.name, tuple(reasons))
    need = model_need(settings, budget, model_path)
    reasons.append(
        f"context {need.n_ctx} per slot x {settings.parallel}: "
        f"{(need.bytes + EDGE_LLAMA_CPP.process_bytes) / 2**30:.2f} GiB of a {budget.budget_bytes / 2**30:.2f} GiB budget"
    )
    if settings.cache_ram:
        reasons.append(f"prompt cache up to {settings.cache_ram} MiB (counted in the model's share)")
    else:
        reasons.append("prompt cache off")
    reasons.append(generation_speed(settings, budget, model_path, need.n_ctx or 2048))
    return Fit(settings.with_(ctx=need.n_ctx), budget.profile.name, tuple(reasons))


def generation_speed(settings: Settings, budget: Budget, model_path: Path, n_ctx: int) -> str:
    """The planner's generation speed for this file, from this device's `edge bench` calibration
    (profiles.calibration) when there is one for the profile, else the nominal upper bound."""
    from profiles import calibration
    from profiles.plan.planner import SpeedModel, estimate
    from profiles.plan.shape import read_model_shape

    records = calibration.load(calibration.calibration_path(settings.home))
    speed_model = SpeedModel.for_profile(records, budget.profile.name)
    est = estimate(read_model_shape(Path(model_path)), "AS_IS", n_ctx, budget.profile, speed_model=speed_model)
    if est.speed_basis == "upper_bound":
        return f"generation at most {est.tokens_per_s:.0f} tokens/s (nominal bandwidth; `edge bench` measures it)"
    return f"generation {est.tokens_per_s:.0f} tokens/s ({est.speed_basis}, edge bench on this device)"


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
