"""``convspectra report MODEL``: the exact spectrum of every conv and linear layer of a model."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ._common import (
    PLOT_SUFFIXES,
    add_output,
    positive_float,
    positive_int,
    step,
    threshold,
    write_text,
    writes_to_stdout,
)

__all__ = ["PROGRESS_MODES", "add_report_options", "build_model", "register", "run", "write_outputs"]

#: The values of ``--progress``.
PROGRESS_MODES = ("auto", "bar", "lines", "none")

#: Exit status of a report stopped by SIGTERM (128 + 15, as shells report it); Ctrl-C gives 130.
TERMINATED = 143
INTERRUPTED = 130


def add_report_options(
    parser: argparse.ArgumentParser, *, relative_threshold: float = 1e-3, plot: str | None = None
) -> None:
    """Options shared by ``report`` and ``reproduce figure4`` (with their defaults for --threshold and --plot)."""
    parser.add_argument("--weights", metavar="FILE", help="weights (.pt/.pth/.th/.ckpt state dict, or .safetensors)")
    parser.add_argument(
        "--input-shape",
        metavar="N",
        type=positive_int,
        nargs="+",
        help="shape of one input without the batch axis, e.g. 3 32 32 (default: the built-in model's)",
    )
    parser.add_argument("--fold-bn", action="store_true", help="fold each BatchNorm into the conv that feeds it")
    parser.add_argument(
        "--threshold",
        type=threshold,
        default=relative_threshold,
        help=f"effective rank counts singular values above THRESHOLD x sigma_max (default {relative_threshold:g})",
    )
    add_output(parser, "--json", help="write the report as JSON")
    add_output(parser, "--csv", help="write one CSV row per layer")
    for flag, what, default in (
        ("--plot", "Figure-4 plot of the sorted spectra", plot),
        ("--plot-norms", "bar chart of per-layer sigma_max", None),
    ):
        add_output(
            parser,
            flag,
            help=f"{what} (.png/.svg/.pdf)",
            default=default,
            suffixes=PLOT_SUFFIXES,
            stdout=False,
            matplotlib_for=PLOT_SUFFIXES,
        )
    parser.add_argument("--log", action="store_true", help="logarithmic y axis in the Figure-4 plot")
    parser.add_argument(
        "--colormap",
        metavar="NAME",
        type=_colormap,
        default="viridis",
        help="colours of the plots by depth: viridis (default, colour-blind safe), paper (the paper's red to green) "
        "or any matplotlib colormap name",
    )


def _colormap(text: str) -> str:
    """``argparse`` type for --colormap: checked when the arguments are parsed, before any work."""
    import importlib.util

    from ..errors import ParameterError

    if text == "paper" or importlib.util.find_spec("matplotlib") is None:  # no plot without matplotlib anyway
        return text
    from ..analysis.colours import check_colormap

    try:
        return str(check_colormap(text))
    except ParameterError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("colormap: ")) from None


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the ``report`` subcommand."""
    report = commands.add_parser(
        "report",
        help="exact spectrum of every conv/linear layer of a model: table, JSON, CSV, plots",
        description="Run one example input through MODEL, record each conv's real input size, and report every "
        "conv and linear layer's exact singular values (circular padding; with --padding model also the exact norm "
        "and certified bracket with the layer's own padding) and an UPPER bound on the network's Lipschitz constant. "
        "MODEL: a built-in name (resnet20/32/44/56), an ONNX file (its Conv/ConvTranspose/Gemm/MatMul layers, sizes "
        "from ONNX shape inference, no forward pass), a TorchScript file, torchvision:NAME or timm:NAME, "
        "'package.module:callable', or a bare torchvision / timm model name. A progress bar is drawn on an interactive "
        "stderr.",
    )
    report.add_argument(
        "model",
        metavar="MODEL",
        help="built-in name, model.onnx, TorchScript file, torchvision:NAME, timm:NAME or package.module:callable",
    )
    report.add_argument(
        "--padding",
        choices=("circular", "model"),
        default="circular",
        help="circular: the paper's wrap-around spectra (fast); model: also each layer's own padding (default "
        "circular)",
    )
    report.add_argument(
        "--full-spectrum", action="store_true", help="include every singular value of every layer in the JSON"
    )
    report.add_argument(
        "--layer-timeout",
        metavar="SECONDS",
        type=positive_float("a positive number of seconds"),
        help="with --padding model: the time each layer may take; a layer that runs out reports the certified "
        "bracket of its own-padding norm instead of the refined value (recorded as 'bracket (time limit)')",
    )
    report.add_argument(
        "--bracket-only",
        action="store_true",
        help="with --padding model: only the certified bracket of each own-padding norm, not refined (fast)",
    )
    report.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="auto",
        help="bar: a progress bar on stderr (tqdm or rich); lines: one plain line per layer on stderr with the time "
        "elapsed and the ETA (for logs and pipes); auto (default): a bar on an interactive stderr, else none",
    )
    report.add_argument("--quiet", action="store_true", help="do not print the table")
    add_report_options(report)
    report.set_defaults(handler=run)


def build_model(args: argparse.Namespace) -> tuple[Any, tuple[int, ...]]:
    """The model (weights loaded) and the input shape the arguments describe."""
    from ..errors import ParameterError
    from ..models import load_weights
    from ._models import resolve_model

    with step(f"building the model {args.model!r}"):
        model, default_shape = resolve_model(args.model)
    if args.weights is not None:
        with step(f"loading the weights {args.weights!r}"):
            load_weights(model, args.weights)
    shape = tuple(args.input_shape) if args.input_shape else default_shape
    if shape is None:
        raise ParameterError(
            f"--input-shape: expected the shape of one input (e.g. --input-shape 3 224 224) for model {args.model!r}, "
            "which has no default; got none"
        )
    return model, shape


def write_outputs(report: Any, args: argparse.Namespace, *, include_spectra: bool) -> None:
    """Write the files asked for by --json/--csv/--plot/--plot-norms (``-``: stdout; files replaced atomically)."""
    if args.json:
        with step(f"writing {args.json!r}"):
            write_text(args.json, report.to_json(include_spectra=include_spectra) + "\n")
    if args.csv:
        with step(f"writing {args.csv!r}"):
            write_text(args.csv, report.to_csv())
    if args.plot:
        with step(f"plotting {args.plot!r}"):
            report.plot_spectra(args.plot, log=args.log, colormap=args.colormap)
    if args.plot_norms:
        with step(f"plotting {args.plot_norms!r}"):
            report.plot_sigma_max(args.plot_norms, colormap=args.colormap)  # bars on a log axis mislead: always linear


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that the report stops the same way."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`_Terminated` (main thread only; the old handler comes back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Checkpoints:
    """The report's ``checkpoint``: rewrite the --json/--csv files after every layer, print progress lines."""

    def __init__(self, args: argparse.Namespace, *, include_spectra: bool, lines: Any) -> None:
        self.files = [(flag, path) for flag, path in (("json", args.json), ("csv", args.csv)) if path and path != "-"]
        self.include_spectra = include_spectra
        self.lines = lines
        self.partial: Any = None

    def __call__(self, partial: Any) -> None:
        self.partial = partial
        for kind, path in self.files:
            with step(f"writing the partial report to {path!r}"):
                if kind == "json":
                    partial.to_json(path, include_spectra=self.include_spectra)
                else:
                    partial.to_csv(path)
        if self.lines is not None:
            self.lines(len(partial.layers), len(partial.layers) + len(partial.missing_layers), _progress_label(partial))

    def stopped(self, interrupt: KeyboardInterrupt) -> int:
        """Say in one line on stderr what the interrupted run left; the exit status."""
        what = "terminated" if isinstance(interrupt, _Terminated) else "interrupted"
        partial = self.partial
        if partial is None:
            message = what
        else:
            done, missing = len(partial.layers), len(partial.missing_layers)
            message = f"{what} after {done} of {done + missing} layers"
            if self.files:
                message += (
                    f"; the partial report ({missing} layers missing) is in {', '.join(p for _, p in self.files)}"
                )
        print(f"convspectra report: {message}", file=sys.stderr, flush=True)
        return TERMINATED if isinstance(interrupt, _Terminated) else INTERRUPTED


def _progress_label(partial: Any) -> str:
    """``name: status in 1.2 s | next: name`` for the last layer of a partial report."""
    parts = []
    if partial.layers:
        row = partial.layers[-1]
        what = row.sigma_max_model_status or "done"
        if row.failed:
            what = "own-padding norm failed" if row.sigma_max is not None else "failed"
        parts.append(f"{row.name}: {what} in {row.seconds:.1f} s")
    if partial.missing_layers:
        parts.append(f"next: {partial.missing_layers[0]}")
    return " | ".join(parts)


def _check_norm_options(args: argparse.Namespace) -> None:
    from ..errors import ParameterError

    for flag, given in (("--layer-timeout", args.layer_timeout is not None), ("--bracket-only", args.bracket_only)):
        if given and args.padding != "model":
            raise ParameterError(
                f"{flag}: applies to the own-padding norms, expected --padding model with it, got --padding "
                f"{args.padding}"
            )


def run(args: argparse.Namespace) -> int:
    """Build the model, compute the report (files rewritten after every layer), print and write it.

    Ctrl-C or SIGTERM stops it with one line on stderr (exit status 130 or 143); the --json/--csv
    files then hold the partial report written after the last finished layer.
    """
    from . import _progress
    from ._models import model_report

    _check_norm_options(args)
    model, shape = build_model(args)
    mode = args.progress
    include_spectra = bool(args.full_spectrum)
    with (
        _sigterm_interrupts(),
        _progress.progress_bar("layers", enabled={"auto": None, "bar": True}.get(mode, False)) as bar,
    ):
        lines = _progress.ProgressLines("layers") if mode == "lines" or (mode == "bar" and bar is None) else None
        checkpoints = _Checkpoints(args, include_spectra=include_spectra, lines=lines)
        try:
            with step(f"computing the report of {args.model!r}"):
                report = model_report(
                    model,
                    shape,
                    padding=args.padding,
                    fold_bn=args.fold_bn,
                    full_spectrum=bool(args.full_spectrum or args.plot),
                    relative_threshold=args.threshold,
                    progress=bar,
                    layer_timeout=args.layer_timeout,
                    refine=not args.bracket_only,
                    checkpoint=checkpoints,
                )
        except KeyboardInterrupt as interrupt:
            return checkpoints.stopped(interrupt)
    if not args.quiet and not writes_to_stdout(args):
        print(f"convspectra report: {report.model} on input {report.input_shape}, {len(report.layers)} layers")
        print(report.to_table())
        print(f"\n{report.seconds:.2f} s")
    write_outputs(report, args, include_spectra=include_spectra)
    return 0
