"""``convspectra reproduce figures2-3`` (alias ``train``): the paper's Section 4.2 training runs and Figures 2-3."""

from __future__ import annotations

import argparse
import logging
import sys

from .._common import non_negative_float, positive_int

__all__ = ["DESCRIPTION", "HELP", "add_options", "run"]

HELP = "train CIFAR ResNets with periodic operator-norm projection (the paper's Section 4.2), resumably"
DESCRIPTION = (
    "Train a CIFAR ResNet (default: ResNet-32 on CIFAR-10 with the He et al. schedule) in several "
    "arms and paired seeds: baseline, projection of every convolution onto the operator-norm ball of radius C "
    "every --project-every steps (clip=C), and the L1 penalty of Proposition 11 (l1=LAMBDA). Each run "
    "checkpoints every epoch under OUT/<arm>/seed<seed>/; re-running the same command resumes exactly where "
    "a killed run stopped. Finishes with a summary (test error mean +- std per arm, paired difference to the "
    "baseline) in OUT/summary.json and OUT/summary.md, and plots like the paper's Figures 2-3 when matplotlib "
    "is installed."
)


def _arm(text: str) -> object:
    from ...errors import ParameterError
    from ...experiments.config import parse_arm

    try:
        return parse_arm(text)
    except ParameterError as err:
        raise argparse.ArgumentTypeError(str(err).split(": ", 1)[1]) from None


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of the training experiment."""
    from ...experiments.config import PAPER_ARMS  # torch-free

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=("cifar10", "fashion-mnist"), default="cifar10", help="default cifar10")
    data.add_argument(
        "--data-dir",
        help="dataset folder: CIFAR-10 python batches (data_batch_1..5, test_batch) or the four Fashion-MNIST IDX "
        "files (default: $CONVSPECTRA_DATA/cifar10, or /usr/share/datasets/fashion-mnist from Debian's "
        "dataset-fashion-mnist)",
    )
    data.add_argument("--download", action="store_true", help="CIFAR-10: download with torchvision if missing")
    data.add_argument("--train-subset", type=positive_int, help="train on a fixed random subset of this many images")
    data.add_argument("--test-subset", type=positive_int, help="test on a fixed random subset of this many images")
    schedule = parser.add_argument_group("schedule (defaults: He et al. 2016 for CIFAR-10)")
    schedule.add_argument("--depth", type=positive_int, default=32, help="ResNet depth 6n+2 (default 32)")
    schedule.add_argument("--epochs", type=positive_int, default=164, help="default 164 (64k steps of batch 128)")
    schedule.add_argument(
        "--milestones", type=positive_int, nargs="+", help="epochs where lr is divided by 10 (default 50%% and 75%%)"
    )
    schedule.add_argument("--batch-size", type=positive_int, default=128, help="default 128")
    schedule.add_argument("--lr", type=non_negative_float, default=0.1, help="initial learning rate (default 0.1)")
    schedule.add_argument("--momentum", type=non_negative_float, default=0.9, help="default 0.9")
    schedule.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="default 1e-4")
    schedule.add_argument("--no-augment", action="store_true", help="no random crop + flip")
    arms = parser.add_argument_group("arms and seeds")
    arms.add_argument(
        "--arms",
        type=_arm,
        nargs="+",
        default=None,
        metavar="ARM",
        help=f"baseline, clip=C or l1=LAMBDA (default: the paper's {' '.join(PAPER_ARMS)})",
    )
    arms.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="paired seeds (default 0 1 2)")
    arms.add_argument("--project-every", type=positive_int, default=100, help="steps between projections (100)")
    running = parser.add_argument_group("running")
    running.add_argument("--out", required=True, help="output folder (runs, checkpoints, logs, summary, plots)")
    running.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA if available")
    running.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    running.add_argument("--threads", type=positive_int, help="torch CPU threads")
    running.add_argument("--nondeterministic", action="store_true", help="allow nondeterministic (faster) kernels")
    running.add_argument("--max-epochs", type=positive_int, help="stop every run after this many epochs of this call")
    running.add_argument(
        "--progress", action="store_true", help="a progress bar with an ETA on stderr (tqdm or rich, when installed)"
    )
    running.add_argument("--summary-only", action="store_true", help="only summarise the runs already in --out")


def run(args: argparse.Namespace) -> int:
    """Train the requested runs (resuming unfinished ones), then summarise everything in ``--out``."""
    from ...experiments.config import PAPER_ARMS, TrainConfig, parse_arm
    from ...experiments.summary import summarize, write_summary
    from ...experiments.training import run_experiment
    from .._progress import progress_bar

    arms = args.arms if args.arms is not None else [parse_arm(a) for a in PAPER_ARMS]
    if not args.summary_only:
        config = TrainConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            download=args.download,
            train_subset=args.train_subset,
            test_subset=args.test_subset,
            depth=args.depth,
            epochs=args.epochs,
            milestones=tuple(args.milestones) if args.milestones else None,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            augment=not args.no_augment,
            project_every=args.project_every,
            device=args.device,
            amp=not args.no_amp,
            deterministic=not args.nondeterministic,
            threads=args.threads,
        )
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
        with progress_bar("training", enabled=args.progress) as progress:
            run_experiment(config, arms, args.seeds, args.out, progress=progress, max_epochs=args.max_epochs)
    summary = summarize(args.out)
    paths = write_summary(summary, args.out)
    print(summary.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
