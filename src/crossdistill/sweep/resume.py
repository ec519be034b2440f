"""Which runs of a sweep a database already holds, and why recorded runs may not count.

A stored row counts as a run of the sweep when its config, resolved through the current
`CompressConfig` (`canonical_config`), hashes like that run. Rows are never rewritten for this:
the comparison happens each time a sweep starts, so the database stays as it was written.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from crossdistill.errors import CrossDistillError
from crossdistill.sweep.hashing import canonical_config, canonical_json, config_hash, config_identity
from crossdistill.sweep.store import SweepDB

# Comparing each run to do with every unmatched row costs runs × rows dict comparisons; past this
# many pairs only the first runs are explained (the reasons repeat across a grid anyway).
_MAX_PAIRS = 250_000


@dataclass
class ResumeState:
    """The recorded runs of a database, keyed by the hash of their re-resolved config."""

    status: dict[str, str] = field(default_factory=dict)  # hash → 'ok' | 'failed' ('ok' wins)
    stored_keys: dict[str, list[str]] = field(default_factory=dict)  # hash → config_hash column values
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # hash → resolved config
    sweeps: dict[str, str | None] = field(default_factory=dict)  # hash → sweep name of its row
    unresolved: int = 0  # rows whose config the current CompressConfig cannot read
    unresolved_reasons: Counter[str] = field(default_factory=Counter)

    def unmatched(self, hashes: Sequence[str]) -> list[str]:
        """Hashes of recorded runs that are not runs of a sweep with these hashes."""
        wanted = set(hashes)
        return [h for h in self.status if h not in wanted]

    def rehashed_for(self, hashes: Sequence[str]) -> int:
        """How many of these runs were found only by re-resolving their stored config."""
        return sum(1 for h in hashes if any(k != h for k in self.stored_keys.get(h, ())))

    def warning(self) -> str | None:
        """One line about rows that count as not done because they no longer resolve."""
        if not self.unresolved:
            return None
        why = "; ".join(f"{r} ({n})" for r, n in self.unresolved_reasons.most_common(3))
        return (f"warning: {self.unresolved} recorded run(s) have configs this version cannot read and "
                f"count as not done: {why}")


def resume_state(db: SweepDB) -> ResumeState:
    """Re-hash every stored row's config through the current config; never raises for a bad row."""
    state = ResumeState()
    for stored_hash, config_text, status, sweep in db.stored_runs():
        try:
            resolved = canonical_config(json.loads(config_text))
            h = config_hash(resolved)
        except Exception as exc:  # noqa: BLE001 — one unreadable row must not stop the sweep
            # CrossDistillError: a setting the config no longer has; ValueError: text that is not
            # JSON; anything else is a config that the current code cannot rebuild. All the same
            # here: the row counts as not done, and the warning names the reason.
            reason = str(exc) if isinstance(exc, CrossDistillError) else f"{type(exc).__name__}: {exc}"
            state.unresolved += 1
            state.unresolved_reasons[reason.split(";")[0][:200]] += 1
            continue
        if state.status.get(h) != "ok":  # one ok row makes the run done, whatever else is recorded
            state.status[h] = status
        state.stored_keys.setdefault(h, []).append(stored_hash)
        state.configs[h] = resolved
        state.sweeps[h] = sweep
    return state


def _fmt(v: Any) -> str:
    # Canonical, so that 1 and 1.0 (equal settings) are not reported as a difference.
    try:
        return canonical_json(v)
    except CrossDistillError:
        return repr(v)


def _short(text: str, limit: int = 120) -> str:
    """A long value shown by its ends (a thousand class names would fill the screen)."""
    return text if len(text) <= limit else f"{text[:limit // 2]} ... {text[-limit // 4:]} ({len(text)} characters)"


def _leaves(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys, the form `--set` takes: a `{name, params}` section gives
    `objective` (its name) and `objective.mu`; any other mapping `finetune.bn`."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and set(value) <= {"name", "params"} and "name" in value:
            out[path] = value["name"]
            out.update(_leaves(value.get("params") or {}, f"{path}."))
        elif isinstance(value, Mapping) and value:
            out.update(_leaves(value, f"{path}."))
        else:
            out[path] = value
    return out


def _identity(config: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        return config_identity(config)
    except Exception:  # noqa: BLE001 - an old row's shape: compared as stored
        return config


def explain_unmatched(todo: Sequence[Mapping[str, Any]], state: ResumeState, hashes: Sequence[str],
                      sweep: str | None = None, limit: int = 8) -> list[str]:
    """Why recorded runs were not recognised as runs to do: for each run to do (its `to_dict()`),
    the nearest unmatched recorded config (rows of the same sweep name first) and the settings
    that differ, counted over the runs. Typically a default that changed since the rows were
    written, which pinning the old value in the sweep file (or --set) makes match again.
    """
    orphans = state.unmatched(hashes)
    same_sweep = [h for h in orphans if sweep is not None and state.sweeps.get(h) == sweep]
    # Compared on what identifies a run: a setting without effect (the fine-tune's, when it is
    # off) differs harmlessly and would only crowd the explanation.
    candidates = [{k: _fmt(v) for k, v in _leaves(_identity(state.configs[h])).items()} for h in (same_sweep or orphans)]
    if not todo or not candidates:
        return []
    diffs: Counter = Counter()
    explained = todo[: max(1, _MAX_PAIRS // len(candidates))]
    for run in explained:
        want = {k: _fmt(v) for k, v in _leaves(_identity(run)).items()}

        def differing(stored: Mapping[str, str]) -> list[str]:
            return [k for k in sorted(set(want) | set(stored)) if want.get(k, "absent") != stored.get(k, "absent")]

        nearest = min(candidates, key=lambda c: len(differing(c)))
        for k in differing(nearest):
            diffs[(k, nearest.get(k, "absent"), want.get(k, "absent"))] += 1
    lines = [f"{k}: recorded {_short(old)}, now {_short(new)} ({n} of {len(explained)} runs)"
             for (k, old, new), n in diffs.most_common(limit)]
    if len(diffs) > limit:
        lines.append(f"... and {len(diffs) - limit} more differences")
    return lines
