"""``python -m simlab finetune``: fine-tune the study's neural head end to end, or train a Siamese network."""

from __future__ import annotations

import json
import logging
import signal
import sys

from simlab.cli.guard import backbone_flag, option_flag
from simlab.finetune.config import FinetuneConfig
from simlab.options import NEGATIVE_SCHEMES

log = logging.getLogger(__name__)


def add_cli(subparsers, data_args) -> None:
    """``python -m simlab finetune ...``"""
    p = subparsers.add_parser("finetune", help="fine-tune the neural head end to end, or train a Siamese network",
                              description="Train on image pairs with live curves in the run store; prints one "
                                          "line per epoch and the test metrics.")
    data_args(p)
    option_flag(p, "--mode", "mode")
    backbone_flag(p, "--backbone", "backbone", default=FinetuneConfig().backbone,
                  help="pretrained backbone both images go through")
    option_flag(p, "--merge", "merge", help="head mode: how the two vectors are merged (default dot)")
    for name in ("tower", "loss", "margin", "epochs", "batch_size", "init"):
        option_flag(p, "--" + name.replace("_", "-"), name)
    option_flag(p, "--lr", "learning_rate")
    option_flag(p, "--unfreeze", "unfreeze", metavar="K")
    option_flag(p, "--backbone-lr-factor", "backbone_lr_factor")
    p.add_argument("--augment", action="store_true", help="augment raw pixels (flip, rotate, zoom, shift, contrast)")
    p.add_argument("--independent", action="store_true", help="with --augment: a different transform per image")
    for name in ("steps_per_epoch", "patience", "select", "embedding_dim"):
        option_flag(p, "--" + name.replace("_", "-"), name)
    for name in ("split", "test_size", "negative_ratio", "seed"):
        option_flag(p, "--" + name.replace("_", "-"), name)
    option_flag(p, "--negatives", "negatives", choices=list(NEGATIVE_SCHEMES))
    p.set_defaults(func=cmd_finetune, check=config_from_args)


def config_from_args(args) -> FinetuneConfig:
    """The validated run configuration the command line describes."""
    return FinetuneConfig(
        dataset=args.dataset, mode=args.mode, backbone=args.backbone, weights=args.weights, merge=args.merge,
        tower=args.tower, init=args.init, loss=args.loss, margin=args.margin, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.lr, unfreeze=args.unfreeze,
        backbone_lr_factor=args.backbone_lr_factor, augment=args.augment, same_transform=not args.independent,
        steps_per_epoch=args.steps_per_epoch, patience=args.patience, select=args.select,
        embedding_dim=args.embedding_dim, split=args.split, test_size=args.test_size,
        negative_ratio=args.negative_ratio, negatives=args.negatives, seed=args.seed).validate()


def cmd_finetune(args) -> int:
    from simlab.finetune.train import run_finetune  # imports Keras: only when the command runs

    config = config_from_args(args)
    out = sys.stderr if args.json else sys.stdout
    requested = []

    def on_sigint(signum, frame):  # first Ctrl-C: stop after this batch and score; second: abort
        if requested:
            raise KeyboardInterrupt
        requested.append(True)
        print("\nstopping after this batch (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = run_finetune(config, should_stop=lambda: bool(requested),
                              echo=lambda t: print(t, file=out, flush=True))
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(f"{result['mode']} · {result['backbone']}: accuracy {result['accuracy']:.3f} "
              f"[{result['accuracy_lo']:.3f}, {result['accuracy_hi']:.3f}], AUC {result['auc']:.3f}, "
              f"{result['epochs_run']} epoch(s), run {result['run_id']}"
              + (f"; its tower is now the backbone {result['tuned_backbone']}" if "tuned_backbone" in result else ""))
    return 0
