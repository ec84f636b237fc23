"""Summaries of a training experiment: test error per arm, paired differences, Figure 2-3 style plots.

Reads every ``<out>/<arm>/seed<seed>/log.json`` written by
:func:`convspectra.experiments.training.train_run`. For each arm: the final test error over its
finished seeds (mean and sample standard deviation), and the *paired* difference to the baseline
(the same seed means the same initialisation and data order, so the per-seed difference removes
most of the seed-to-seed noise): mean, standard deviation and count of ``error(arm) - error(baseline)``.

Example:
    >>> import tempfile
    >>> from convspectra.experiments.summary import summarize
    >>> summarize(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: out_dir: expected run logs <arm>/seed<seed>/log.json under ..., found none
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from .plots import line_plot_svg, save_matplotlib

__all__ = ["ArmSummary", "ExperimentSummary", "load_logs", "summarize", "write_summary"]


@dataclass(frozen=True)
class ArmSummary:
    """Final test error of one arm over its finished seeds, and its paired difference to the baseline."""

    arm: str
    seeds: list[int]
    test_errors: list[float]
    mean: float
    std: float
    paired_seeds: list[int] = field(default_factory=list)
    paired_mean: float | None = None
    paired_std: float | None = None
    train_seconds: float = 0.0
    max_sigma: float = 0.0
    unfinished: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ExperimentSummary:
    """Everything :func:`summarize` found, JSON- and Markdown-ready."""

    out_dir: str
    config: dict[str, Any]
    dataset: dict[str, Any]
    machine: dict[str, Any]
    arms: list[ArmSummary]
    curves: dict[str, dict[str, list[float]]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return asdict(self)

    def to_markdown(self) -> str:
        """A Markdown table: arm, seeds, test error mean +- std, paired difference to baseline."""
        c, d = self.config, self.dataset
        lines = [
            f"ResNet-{c['depth']} on {d['name']} ({d['train_images']} train / {d['test_images']} test images), "
            f"{c['epochs']} epochs, batch {c['batch_size']}, lr {c['lr']:g} x{c['lr_decay']:g} at epochs "
            f"{c['milestones']}, momentum {c['momentum']:g}, weight decay {c['weight_decay']:g}, "
            f"{'crop+flip' if c['augment'] else 'no augmentation'}, projection every {c['project_every']} steps.",
            "",
            "| arm | seeds | test error (%) mean +- std | paired diff. to baseline (pp) | max layer sigma | "
            "train time (s) |",
            "|---|---|---|---|---|---|",
        ]
        for arm in self.arms:
            paired = "-"
            if arm.paired_mean is not None and arm.arm != "baseline":
                spread = f" +- {100 * (arm.paired_std or 0.0):.2f}" if len(arm.paired_seeds) > 1 else ""
                paired = f"{100 * arm.paired_mean:+.2f}{spread} (n={len(arm.paired_seeds)})"
            seeds = ",".join(map(str, arm.seeds)) or "none"
            if arm.unfinished:
                seeds += f" ({len(arm.unfinished)} unfinished)"
            if not arm.seeds:
                lines.append(f"| {arm.arm} | {seeds} | - | - | - | - |")
                continue
            error = f"{100 * arm.mean:.2f}" + (f" +- {100 * arm.std:.2f}" if len(arm.seeds) > 1 else "")
            lines.append(
                f"| {arm.arm} | {seeds} | {error} | {paired} | {arm.max_sigma:.3f} | {arm.train_seconds:.0f} |"
            )
        return "\n".join(lines) + "\n"


def load_logs(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every run log under ``out_dir`` (``<arm>/seed<seed>/log.json``), sorted by arm then seed.

    Raises:
        FileNotFoundError: if there is none.
    """
    root = Path(out_dir)
    paths = sorted(root.glob("*/seed*/log.json"))
    if not paths:
        raise FileNotFoundError(f"out_dir: expected run logs <arm>/seed<seed>/log.json under {str(root)!r}, found none")
    logs = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            logs.append(json.load(handle))
    return logs


def _arm_order(name: str) -> tuple[int, float]:
    kind, _, value = name.partition("=")
    return ({"baseline": 0, "clip": 1, "l1": 2}.get(kind, 3), float(value) if value else 0.0)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(out_dir: str | os.PathLike[str]) -> ExperimentSummary:
    """Summarise the runs under ``out_dir`` (see the module docstring).

    Raises:
        FileNotFoundError: if there are no run logs.
        ParameterError: if the runs do not share one config (mixing schedules would make the table lie).
    """
    logs = load_logs(out_dir)
    config = logs[0]["config"]
    for log in logs[1:]:
        if log["config"] != config:
            raise ParameterError(
                f"out_dir: expected runs of one config in {str(out_dir)!r}, got arm {log['arm']} seed {log['seed']} "
                "with a different one (keep each schedule in its own folder)"
            )
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for log in logs:
        by_arm.setdefault(log["arm"], []).append(log)
    final = {
        (log["arm"], log["seed"]): log["epochs"][-1]["test_error"] for log in logs if log["finished"] and log["epochs"]
    }
    arms, curves = [], {}
    for name in sorted(by_arm, key=_arm_order):
        runs = by_arm[name]
        done = [log for log in runs if log["finished"]]
        seeds = [log["seed"] for log in done]
        errors = [final[(name, s)] for s in seeds]
        paired = [s for s in seeds if ("baseline", s) in final]
        diffs = [final[(name, s)] - final[("baseline", s)] for s in paired]
        arms.append(
            ArmSummary(
                arm=name,
                seeds=seeds,
                test_errors=errors,
                mean=statistics.fmean(errors) if errors else float("nan"),
                std=_std(errors),
                paired_seeds=paired,
                paired_mean=statistics.fmean(diffs) if diffs else None,
                paired_std=_std(diffs) if diffs else None,
                train_seconds=statistics.fmean(log["epochs"][-1]["train_seconds"] for log in done) if done else 0.0,
                max_sigma=statistics.fmean(max(log["epochs"][-1]["sigma_max"].values()) for log in done)
                if done
                else 0.0,
                unfinished=[log["seed"] for log in runs if not log["finished"]],
            )
        )
        if done:
            length = min(len(log["epochs"]) for log in done)
            curves[name] = {
                key: [statistics.fmean(log["epochs"][i][key] for log in done) for i in range(length)]
                for key in ("train_loss", "test_error", "train_seconds")
            }
            curves[name]["epoch"] = [float(i + 1) for i in range(length)]
    return ExperimentSummary(str(out_dir), config, logs[0]["dataset"], logs[0]["machine"], arms, curves)


def write_summary(summary: ExperimentSummary, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``summary.json``, ``summary.md`` and the figures (SVG always, PNG with matplotlib) to ``out_dir``.

    Figures (means over the finished seeds of each arm): ``figure2.svg`` (test error against
    epochs, like the paper's Figure 2), ``figure3.svg`` (test error against training time, like
    Figure 3), ``train_loss.svg`` (training loss against epochs) and, with matplotlib, all of them
    plus training loss against time in ``figures.png``.

    Returns:
        The paths written.
    """
    root = Path(out_dir)
    written = [root / "summary.json", root / "summary.md"]
    with open(written[0], "w", encoding="utf-8") as handle:
        json.dump(summary.to_dict(), handle, indent=1)
    written[1].write_text(summary.to_markdown(), encoding="utf-8")
    if not summary.curves:
        return written
    title = f"ResNet-{summary.config['depth']}, {summary.dataset['name']}"
    panels = [
        ("figure2.svg", "epoch", "test_error", "epoch", "test error", False),
        ("figure3.svg", "train_seconds", "test_error", "training time (s)", "test error", False),
        ("train_loss.svg", "epoch", "train_loss", "epoch", "training loss", True),
        (None, "train_seconds", "train_loss", "training time (s)", "training loss", True),
    ]
    matplotlib_panels = []
    for filename, x_key, y_key, x_label, y_label, log_y in panels:
        series = {arm: (curve[x_key], curve[y_key]) for arm, curve in summary.curves.items()}
        matplotlib_panels.append(
            {"series": series, "title": title, "x_label": x_label, "y_label": y_label, "log_y": log_y}
        )
        if filename:
            svg = line_plot_svg(series, title=title, x_label=x_label, y_label=y_label, log_y=log_y)
            (root / filename).write_text(svg, encoding="utf-8")
            written.append(root / filename)
    if save_matplotlib(matplotlib_panels, str(root / "figures.png")):
        written.append(root / "figures.png")
    return written
