"""The search's shortlist: a band near the budget, spread across the axes, ranked by quality.

Thousands of candidates fit a budget to within a fraction of a percent of each other, so the largest
ones differ by rounding, not by design (issue 15: the ten largest 9B candidates of the 12B space are
within 0.01 % of each other yet span hidden 3840-5120). The shortlist is therefore chosen in two
steps, both pure arithmetic on the candidates:

1. **band**: a candidate's *budget use* is the largest of its figure / limit over the targets given
   (memory / budget, parameters / `--target-params`, active parameters / `--target-active-params`);
   every feasible candidate has a use <= 1. The band keeps those within `band` (default 5 %) of the
   largest use among them: shapes that spend the budget, whatever axis they spend it on.
2. **spread**: from the band, `n` candidates by greedy max-min (farthest-point) selection over the
   axis values, each axis normalised to [0, 1] over the band (axes the band does not vary are left
   out): the first is the largest by parameters, each next one the band member farthest (Euclidean)
   from every one already taken; ties go to the larger candidate. The shortlist therefore holds the
   extremes of the trade-off (deep and narrow, shallow and wide, Mamba-heavy, FFN-heavy, ...) before
   any two near neighbours.

Ranking (`minitron.recipes.prune`): with weights, `--scores` and `--data` the zero-shot proxy ranks the
whole shortlist; `--candidate-distill-steps N` then distils the best `--distill-candidates` for N
steps and ranks those by the same figure after distillation. Without a quality figure the largest
by parameters wins. `reason` says in one line why the winner won.
"""

from __future__ import annotations

from dataclasses import dataclass

from minitron.errors import InputError
from minitron.prune.search import AXES, Candidate

DEFAULT_BAND = 0.05
DEFAULT_DISTILL_CANDIDATES = 3


def check_band(band: float) -> float:
    if not 0.0 <= band <= 1.0:
        raise InputError(f"must be in [0, 1] (a fraction below the largest feasible budget use, e.g. 0.05), got {band}",
                         flag="--band")
    return band


def limits_of(target) -> dict:
    """{candidate field: limit} of the limits a `minitron.prune.target.Target` sets (the `Candidate`
    fields each one bounds)."""
    limits = {"memory_bytes": target.budget.budget_bytes if target.budget is not None else None,
              "params": target.params, "active_params": target.active_params}
    return {k: v for k, v in limits.items() if v is not None}


def budget_use(c: Candidate, limits: dict) -> float:
    """The largest figure / limit of `c` over the targets: <= 1 when it fits them all."""
    return max((getattr(c, k) / v for k, v in limits.items()), default=1.0)


def in_band(feasible: list[Candidate], limits: dict, band: float) -> list[Candidate]:
    """The feasible candidates whose budget use is within `band` of the largest, in the given order."""
    if not feasible:
        return []
    uses = [budget_use(c, limits) for c in feasible]
    floor = (1.0 - band) * max(uses)
    return [c for c, u in zip(feasible, uses, strict=True) if u >= floor]


def varying_axes(cands: list[Candidate]) -> list[str]:
    return [a for a in AXES if len({getattr(c, a) for c in cands}) > 1]


def spread(cands: list[Candidate], n: int) -> list[Candidate]:
    """`n` of `cands` by greedy max-min selection over normalised axis values, in the given order.

    `cands[0]` is taken first (the caller passes them largest first); each next pick is the one whose
    nearest pick so far is farthest; ties go to the earlier candidate.
    """
    if len(cands) <= n:
        return list(cands)
    if n <= 0:
        return []
    import torch

    axes = varying_axes(cands)
    x = torch.tensor([[float(getattr(c, a)) for a in axes] for c in cands], dtype=torch.float64).reshape(len(cands), -1)
    lo, hi = x.min(0).values, x.max(0).values
    x = (x - lo) / (hi - lo)  # every kept axis varies, so hi > lo
    chosen = [0]
    nearest = ((x - x[0]) ** 2).sum(1)  # squared distance to the nearest pick
    while len(chosen) < n:
        nearest[chosen] = -1.0
        i = int(torch.argmax(nearest))  # the first maximum: ties go to the earlier candidate
        chosen.append(i)
        nearest = torch.minimum(nearest, ((x - x[i]) ** 2).sum(1))
    return [cands[i] for i in sorted(chosen)]


@dataclass(frozen=True)
class Shortlist:
    members: list[Candidate]  # in the order of the feasible list given (largest first)
    band: float
    in_band: int  # feasible candidates within the band
    axes: list[str]  # the axes the band varies, over which the members are spread

    def to_dict(self) -> dict:
        return {"band": self.band, "in_band": self.in_band, "size": len(self.members), "spread_axes": self.axes,
                "method": "max-min spread over normalised axis values"}


def take(feasible: list[Candidate], *, n: int, band: float, limits: dict) -> Shortlist:
    """The shortlist of `feasible` (largest first, as `search.rank_by_params` orders them)."""
    near = in_band(feasible, limits, band)
    return Shortlist(spread(near, n), band, len(near), varying_axes(near))


def reason(rows: list[dict], *, key: str | None, shortlist: int, distilled: int = 0, steps: int = 0) -> str:
    """One line: why `rows[0]` (the ranked shortlist, winner first) won; `key` is the field it was ranked by
    (`proxy_kl`, `distill_loss`, ...; None: parameters)."""
    w = rows[0]
    if key is None:
        what = f"of the {shortlist} shortlisted" if shortlist else "feasible candidate"
        return (f"largest {what} by parameters ({w['params']:,}); no quality figure ranked them "
                "(give weights, --scores and --data for the zero-shot proxy)")
    nxt = f", next {rows[1][key]:.4f}" if len(rows) > 1 and rows[1].get(key) is not None else ""
    if key.startswith("distill_"):
        zero_shot = "proxy_" + key.removeprefix("distill_")
        was = 1 + sorted(rows[:distilled], key=lambda d: d[zero_shot]).index(w)
        return (f"lowest {key} after {steps} distillation steps ({w[key]:.4f}{nxt}) of the {distilled} best by the "
                f"zero-shot proxy (#{was} there), among {shortlist} shortlisted")
    return f"lowest zero-shot {key} ({w[key]:.4f}{nxt}) of the {shortlist} shortlisted"
