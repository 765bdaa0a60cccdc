"""How far apart runs of the peer bench drift: the two sides' loss curves against each other and against their
own repeats, and the suite scores of every evaluated repeat. Both sides compute the same loss on the same
batches from the same weights, so a gap between them only means something when it is larger than what
reruns of one side already show."""
from __future__ import annotations


def max_loss_gap(a: dict, b: dict) -> tuple[float, int]:
    """Largest |loss difference| over the steps of two runs, and the (1-based) step where it is."""
    gaps = [abs(x - y) for x, y in zip(a["losses"], b["losses"])]
    k = max(range(len(gaps)), key=gaps.__getitem__)
    return gaps[k], k + 1


def repeat_gap(runs: list[dict]) -> float | None:
    """Largest per-step loss difference between a side's first run and its other repeats (None: one run)."""
    return max(max_loss_gap(runs[0], r)[0] for r in runs[1:]) if len(runs) > 1 else None


def suite_over_repeats(runs: list[dict], suites: dict) -> tuple[dict | None, list[float]]:
    """Per-task scores averaged over the repeats that were evaluated, and each evaluated repeat's mean."""
    scored = [suites[r["name"]] for r in runs if r["name"] in suites]
    if not scored:
        return None, []
    mean = {t: sum(s[t] for s in scored) / len(scored) for t in scored[0]}
    return mean, [s["mean"] for s in scored]


def _fmt(x: float | None) -> str:
    return "one run" if x is None else f"{x:.2e}"


def drift_checks(where: str, et_runs: list[dict], st_runs: list[dict], et_means: list[float],
                 st_means: list[float]) -> list[dict]:
    """Measured, not goals: the loss curves' gap between the sides vs within each side; and, where both sides
    have two or more evaluated repeats, whether the suite gap is inside the larger run-to-run range."""
    gap, step = max_loss_gap(et_runs[0], st_runs[0])
    out = [{"check": f"loss curves, largest per-step gap ({where})", "pass": None,
            "value": f"embedtrain vs ST {gap:.2e} (step {step}); ST repeats {_fmt(repeat_gap(st_runs))}; "
                     f"embedtrain repeats {_fmt(repeat_gap(et_runs))}"}]
    if len(et_means) > 1 and len(st_means) > 1:
        d = sum(et_means) / len(et_means) - sum(st_means) / len(st_means)
        spread = max(max(et_means) - min(et_means), max(st_means) - min(st_means))
        out.append({"check": f"suite gap within the sides' run-to-run range ({where})", "pass": abs(d) <= spread,
                    "value": f"|{d:+.4f}| vs range {spread:.4f} (embedtrain "
                             f"{', '.join(f'{m:.4f}' for m in et_means)}; ST {', '.join(f'{m:.4f}' for m in st_means)})"})
    return out
