"""A request's approximate step-caching policy (`GenerationRequest.cache`): names, ranges, defaults, validation.

Torch-free, so the API validates `cache` with the same rules as the engine. `parse_cache` is the one gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.request import InvalidRequest

NONE, FIRST_BLOCK, TAYLORSEER = "none", "first_block", "taylorseer"

# policy -> setting -> (kind, low, high, default). Defaults are the documented ones (README, BENCHMARKS.md).
SETTINGS: dict[str, dict[str, tuple[type, float, float, float]]] = {
    NONE: {},
    # Relative L1 change of the first block's residual since the last fully computed step, below which the other
    # blocks are skipped and their cached residual added. Model-specific: 0.05 never skipped on a small Wan.
    FIRST_BLOCK: {"threshold": (float, 0.01, 1.0, 0.2)},
    # Compute every `interval`-th step after `warmup` computed ones; forecast the others from finite differences
    # of the computed outputs, up to `order`.
    TAYLORSEER: {"interval": (int, 2, 8, 2), "warmup": (int, 1, 10, 2), "order": (int, 0, 2, 1)},
}
POLICIES = tuple(SETTINGS)


@dataclass(frozen=True)
class CachePolicy:
    """One request's policy with every setting resolved."""

    policy: str = NONE
    threshold: float = 0.0
    interval: int = 1
    warmup: int = 0
    order: int = 0

    @property
    def approximate(self) -> bool:
        return self.policy != NONE

    def as_dict(self) -> dict[str, Any]:
        """The resolved settings, as a request's `cache` (recorded in the job's params)."""
        return {"policy": self.policy, **{name: getattr(self, name) for name in SETTINGS[self.policy]}}


def parse_cache(value: Any, model_defaults: dict[str, dict[str, Any]] | None = None) -> CachePolicy:
    """Validate a request's `cache` value (None, or an object with `policy` and its settings).

    Settings left out take the model's own defaults (`model_defaults`, policy -> settings: a registry entry's
    `options.cache_defaults`, since good thresholds are model-specific), then the documented ones.
    Raises `InvalidRequest("cache", ...)` for the shape or policy and `InvalidRequest("cache.<setting>", ...)`
    for a setting out of its range, of the wrong type, or unknown to the policy.
    """
    if value is None:
        return CachePolicy()
    if not isinstance(value, dict):
        raise InvalidRequest("cache", 'must be an object such as {"policy": "first_block"}')
    policy = value.get("policy")
    if not isinstance(policy, str) or policy not in SETTINGS:  # an object or array is unhashable
        raise InvalidRequest("cache.policy", f"must be one of: {', '.join(POLICIES)}")
    allowed = SETTINGS[policy]
    resolved: dict[str, Any] = {"policy": policy}
    for name in value:
        if name != "policy" and name not in allowed:
            known = ", ".join(allowed) or "no settings"
            raise InvalidRequest(f"cache.{name}", f"unknown setting for policy {policy!r} (it takes {known})")
    own = (model_defaults or {}).get(policy, {})
    for name, (kind, low, high, default) in allowed.items():
        setting = value.get(name)
        if setting is None:
            setting = own.get(name)
        if setting is None:
            resolved[name] = kind(default)
            continue
        if isinstance(setting, bool) or not isinstance(setting, (int, float)):
            raise InvalidRequest(f"cache.{name}", "must be a number" if kind is float else "must be an integer")
        if kind is int:
            if isinstance(setting, float) and not setting.is_integer():
                raise InvalidRequest(f"cache.{name}", "must be an integer")
            setting = int(setting)
        if not low <= setting <= high:
            raise InvalidRequest(f"cache.{name}", f"must be between {kind(low)} and {kind(high)}")
        resolved[name] = kind(setting)
    return CachePolicy(**resolved)


def check_model_defaults(model_defaults: Any) -> None:
    """A registry entry's `options.cache_defaults` must itself be valid; raises ValueError naming the setting."""
    if not isinstance(model_defaults, dict):
        raise ValueError("options.cache_defaults must be a table of policy -> settings")
    for policy, settings in model_defaults.items():
        try:
            parse_cache({"policy": policy, **settings})
        except (InvalidRequest, TypeError) as exc:
            raise ValueError(f"options.cache_defaults.{policy}: {exc}") from None
