"""``python -m simlab finetune``: fine-tune the study's neural head end to end, or train a Siamese network."""

from __future__ import annotations

import json
import logging
import signal
import sys

from simlab.cli.guard import option_flag
from simlab.finetune.config import INITS, LOSSES, MODES, SELECTIONS, TOWERS, FinetuneConfig
from simlab.pairs import NEGATIVE_SCHEMES

log = logging.getLogger(__name__)


def add_cli(subparsers, data_args) -> None:
    """``python -m simlab finetune ...``"""
    p = subparsers.add_parser("finetune", help="fine-tune the neural head end to end, or train a Siamese network",
                              description="Train on image pairs with live curves in the run store; prints one "
                                          "line per epoch and the test metrics.")
    data_args(p)
    d = FinetuneConfig()
    p.add_argument("--mode", default=d.mode, choices=list(MODES), help="head | siamese (default siamese)")
    p.add_argument("--backbone", default=d.backbone, help=f"pretrained backbone (default {d.backbone})")
    p.add_argument("--merge", default=d.merge, help="head mode: dot | l1 | l2 | concat (default dot)")
    p.add_argument("--tower", default=d.tower, choices=list(TOWERS),
                   help="siamese: backbone (+ projection) or small-cnn")
    p.add_argument("--loss", default=d.loss, choices=list(LOSSES),
                   help=f"siamese: {' | '.join(LOSSES)} (default {d.loss})")
    p.add_argument("--margin", type=float, default=d.margin)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--init", default=d.init, choices=list(INITS),
                   help="siamese projection: learned whitening of the training pairs (default) or random")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of the head / projection (default 1e-3; 1e-4 from whitening)")
    p.add_argument("--unfreeze", type=int, default=d.unfreeze, metavar="K",
                   help="also train the backbone's top K weighted layers, at lr x --backbone-lr-factor")
    p.add_argument("--backbone-lr-factor", type=float, default=d.backbone_lr_factor)
    p.add_argument("--augment", action="store_true", help="augment raw pixels (flip, rotate, zoom, shift, contrast)")
    p.add_argument("--independent", action="store_true", help="with --augment: a different transform per image")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap batches per epoch (random subset each)")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping on the selection metric")
    p.add_argument("--select", default=None, choices=list(SELECTIONS),
                   help="what picks the best epoch (default: val_map for siamese, val_loss for head)")
    p.add_argument("--embedding-dim", type=int, default=None,
                   help="siamese embedding size (default: the backbone's own from whitening, else 128)")
    option_flag(p, "--split", "split", default=d.split)
    option_flag(p, "--test-size", "test_size", default=d.test_size)
    option_flag(p, "--negative-ratio", "negative_ratio", default=d.negative_ratio)
    option_flag(p, "--negatives", "negatives", default=d.negatives, choices=list(NEGATIVE_SCHEMES))
    option_flag(p, "--seed", "seed", default=d.seed)
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
