"""The network bound of five torchvision ImageNet models at 224x224, with a summary of the rule per node (issue 12).

For each model (random weights, eval mode) it runs :func:`convspectra.analysis.spectral_report`
and prints the network bound (or why there is none), the first node without a global constant,
and how many nodes used each kind of rule. ``--padding model`` (default) bounds the models as
they run (zero padding) from each layer's certified upper norm; ``--refine`` refines every layer
first (slower; the bound is as valid either way, since it uses the upper ends), ``--padding
circular`` uses the circular norms (the paper's setting).

Needs torchvision; run it with a Python that has it and this checkout on the path::

    PYTHONPATH=src /work/venv-tv/bin/python benchmarks/network_bound_imagenet.py
    PYTHONPATH=src /work/venv-tv/bin/python benchmarks/network_bound_imagenet.py --models resnet50 --rules

No timings are compared: the figures do not depend on the machine (the seconds are for information).
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import torch

from convspectra.analysis import spectral_report

MODELS = ("resnet50", "resnext50_32x4d", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")


def rule_kind(rule: str) -> str:
    """The rule's kind for the summary: its text up to the first colon or parenthesis, numbers dropped."""
    head = re.split(r"[:(]", rule, maxsplit=1)[0].strip()
    return re.sub(r"\s+\S*\d\S*", "", head) or rule


def main(argv: list[str] | None = None) -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--padding", choices=("model", "circular"), default="model")
    parser.add_argument("--refine", action="store_true", help="refine every layer (default: certified brackets)")
    parser.add_argument("--rules", action="store_true", help="print every node's rule")
    args = parser.parse_args(argv)
    print(f"# torch {torch.__version__}, torchvision {torchvision.__version__}; padding {args.padding}, "
          f"refine {args.refine}; random weights (seed 0), 1x3x224x224")  # fmt: skip
    for name in args.models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        start = time.perf_counter()
        report = spectral_report(model, (3, 224, 224), padding=args.padding, refine=args.refine)
        seconds = time.perf_counter() - start
        bound = report.network_bound
        kinds = collections.Counter(rule_kind(rule.rule) for rule in bound.rules)
        missing = [rule for rule in bound.rules if rule.rule.startswith("no Lipschitz rule")]
        value = "None" if bound.value is None else f"{bound.value:.4g}"
        print(f"\n## {name}: bound {value}  ({len(report.layers)} layers, {len(bound.rules)} nodes, {seconds:.0f} s)")
        print(f"   {bound.description}")
        print(f"   nodes without a rule: {len(missing)}")
        for kind, count in sorted(kinds.items(), key=lambda item: -item[1]):
            print(f"   {count:4d}  {kind}")
        if args.rules:
            print(bound.to_table())


if __name__ == "__main__":
    main()
