"""Fine-tune a zoo model on your own classes, save safetensors checkpoints, resume, and run on 1..N GPUs or a CPU.

One process (GPU if there is one, else CPU):

    python examples/finetune.py --model galdnet_r50_cityscapes --data my_data/ --num-classes 3 \\
        --classes road,curb,other --crop 512 --batch-size 4 --steps 2000 --output runs/curbs

Several GPUs or machines (DistributedDataParallel, SyncBatchNorm; ``--batch-size`` is per process):

    torchrun --nproc_per_node 4 examples/finetune.py ...same arguments...
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 --nproc_per_node 8 examples/finetune.py ...

Data layouts (``--layout``):
  folders     ``<data>/images/<name>.jpg|png`` with ``<data>/masks/<name>.png`` (class indices, 255 = ignore)
  cityscapes  ``<data>/leftImg8bit/<split>/*/*_leftImg8bit.png`` with
              ``<data>/gtFine/<split>/*/*_gtFine_labelIds.png`` (label ids, read as trainIds)

Every ``--save-every`` steps, ``<output>/checkpoint-<step>/`` gets ``model.safetensors`` + ``config.json``
(loadable with ``cityseg_zoo.hf.from_pretrained``) and the optimizer/scheduler/RNG state; ``--resume auto``
continues from ``<output>/latest``. ``<output>/log.jsonl`` has one line per step (loss terms, learning rates).
Settings left out come from the architecture's recipe (``ArchSpec.recipe``, ``cityseg_zoo.train.recipe_for``) (lr, weight decay, poly
power, head lr multiplier, OHEM), else SGD lr 0.01, momentum 0.9, weight decay 5e-4, poly 0.9, cross-entropy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import cityseg_zoo
from cityseg_zoo.data.normalization import Normalization
from cityseg_zoo.errors import CitysegZooError
from cityseg_zoo.hf import unwrap_model
from cityseg_zoo.train import (RandomScaleCropFlip, ResumableSampler, SegmentationLoss, SegmentationPairs,
                               build_sgd, cityscapes_pairs, convert_sync_batchnorm, find_checkpoint, folder_pairs,
                               init_distributed,
                               load_training_checkpoint, poly_scheduler, recipe_for, save_training_checkpoint)

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, help="architecture or weight name, e.g. galdnet_r50_cityscapes")
    p.add_argument("--pretrained", default="true",
                   help="'true' (the name's weights), 'false' (random init), a weight name, or a checkpoint path")
    p.add_argument("--model-kwargs", default="{}", help='JSON builder arguments, e.g. \'{"recurrence": 2}\'')
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--layout", choices=("folders", "cityscapes"), default="folders")
    p.add_argument("--split", default="train", help="cityscapes layout: the split folder")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--classes", help="comma-separated class names (default class_0, class_1, ...)")
    p.add_argument("--ignore-index", type=int, default=255)
    p.add_argument("--crop", type=int, default=None, help="square crop side (default: the recipe's, else 512)")
    p.add_argument("--scale-min", type=float, default=None)
    p.add_argument("--scale-max", type=float, default=None)
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--batch-size", type=int, default=2, help="images per process (BatchNorm needs >= 2)")
    p.add_argument("--steps", type=int, required=True, help="total optimizer steps")
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--power", type=float, help="poly decay power")
    p.add_argument("--head-lr-mult", type=float, help="learning-rate multiplier of everything but the backbone")
    p.add_argument("--loss", choices=("ce", "ohem"))
    p.add_argument("--ohem-thresh", type=float, default=0.7)
    p.add_argument("--ohem-min-kept", type=int, default=100_000)
    p.add_argument("--aux-weight", type=float, default=0.4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--resume", help="'auto' (<output>/latest when present) or a checkpoint folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    p.add_argument("--no-sync-bn", action="store_true", help="keep per-process BatchNorm statistics under DDP")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dump-replicas", action="store_true",
                   help="at the end, every rank writes replica-rank<r>.safetensors (to check DDP replicas agree)")
    return p.parse_args(argv)


def resolve_settings(args: argparse.Namespace, architecture: str) -> dict:
    """Explicit arguments, else the architecture's recipe, else generic defaults."""
    recipe = recipe_for(architecture)
    defaults = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "power": 0.9, "head_lr_mult": 1.0, "loss": "ce",
                "crop": 512, "scale_min": 0.5, "scale_max": 2.0}
    if recipe is not None:
        defaults.update(lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, power=recipe.power,
                        head_lr_mult=recipe.head_lr_mult, loss=recipe.loss, crop=recipe.crop)
        if recipe.scale_range:
            defaults.update(scale_min=recipe.scale_range[0], scale_max=recipe.scale_range[1])
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    chosen["recipe"] = recipe.source if recipe is not None else None
    return chosen


def parse_pretrained(text: str):
    lowered = text.strip().lower()
    return {"true": True, "false": False, "none": False}.get(lowered, text)


def build_model(args: argparse.Namespace, load_weights: bool = True):
    """The model with ``--num-classes`` outputs (and ``--classes`` names), recorded as fine-tuned from where it
    started: its ``pretrained_cfg`` then describes the fine-tuned model, not the published weights."""
    model_kwargs = json.loads(args.model_kwargs)
    pretrained = parse_pretrained(args.pretrained) if load_weights else False
    classes = args.classes.split(",") if args.classes else None
    if classes is not None and len(classes) != args.num_classes:
        raise CitysegZooError(f"--classes names {len(classes)} classes, --num-classes is {args.num_classes}")
    model = cityseg_zoo.create_model(args.model, pretrained=pretrained, num_classes=args.num_classes,
                                     class_names=classes, **model_kwargs)
    started_from = model.pretrained_cfg.get("weights") or (str(pretrained) if pretrained not in (False, True)
                                                             else None)
    model.mark_finetuned(started_from)
    return model


def make_dataset(args: argparse.Namespace, settings: dict, model) -> SegmentationPairs:
    pairs = (cityscapes_pairs(args.data, args.split) if args.layout == "cityscapes"
             else folder_pairs(args.data / "images", args.data / "masks"))
    transform = RandomScaleCropFlip(settings["crop"], (settings["scale_min"], settings["scale_max"]),
                                    flip=not args.no_flip, ignore_index=args.ignore_index)
    dataset = SegmentationPairs(pairs, Normalization.from_dict(model.pretrained_cfg["input"]), args.num_classes,
                                transform, ignore_index=args.ignore_index)
    return dataset


def train(args: argparse.Namespace) -> Path | None:
    ctx = init_distributed(args.device)
    torch.manual_seed(args.seed + ctx.rank)
    resume = None
    if args.resume == "auto":
        resume = find_checkpoint(args.output) if (args.output / "latest").is_file() else None
    elif args.resume:
        resume = find_checkpoint(args.resume)
    model = build_model(args, load_weights=resume is None)   # a resumed run takes every weight from the checkpoint
    architecture = model.pretrained_cfg["architecture"]
    settings = resolve_settings(args, architecture)
    dataset = make_dataset(args, settings, model)
    sampler = ResumableSampler(len(dataset), seed=args.seed, rank=ctx.rank, world_size=ctx.world_size)
    steps_per_epoch = sampler.per_rank // args.batch_size
    if steps_per_epoch == 0:
        raise CitysegZooError(f"{len(dataset)} images over {ctx.world_size} process(es) is less than one batch of "
                              f"{args.batch_size}")

    if ctx.enabled and not args.no_sync_bn:
        if ctx.device.type == "cuda":
            model = convert_sync_batchnorm(model)
        elif ctx.is_main:
            print("note: BatchNorm statistics are per process (PyTorch syncs them on GPUs only)", file=sys.stderr)
    model = model.to(ctx.device).train()
    optimizer = build_sgd(model, settings["lr"], settings["momentum"], settings["weight_decay"],
                          settings["head_lr_mult"])
    scheduler = poly_scheduler(optimizer, args.steps, settings["power"])
    criterion = SegmentationLoss(settings["loss"], args.ohem_thresh, args.ohem_min_kept, args.ignore_index,
                                 weights={"out": 1.0, "aux": args.aux_weight, "pam": 1.0, "cam": 1.0})

    step = 0
    if resume is not None:
        # One process: the saved RNG state is restored, so the resumed run replays an unbroken one exactly.
        # Several: rank 0's state is not every rank's, so each rank reseeds its own stream (dropout masks).
        record = load_training_checkpoint(resume, model, optimizer, scheduler, restore_rng=not ctx.enabled)
        step = record["step"]
        saved_total = scheduler.lr_lambdas[0].total_steps
        if saved_total != args.steps:   # the poly curve is a closed form of (step, total): the new total wins
            for decay in scheduler.lr_lambdas:
                decay.total_steps = args.steps
            if ctx.is_main:
                print(f"note: the checkpoint was for {saved_total} steps; the schedule now decays over {args.steps}",
                      file=sys.stderr)
        if ctx.enabled:
            torch.manual_seed(args.seed + ctx.rank + 7919 * step)
        if ctx.is_main:
            print(f"resumed from {resume} at step {step}", file=sys.stderr)
    if ctx.rank == 0:
        args.output.mkdir(parents=True, exist_ok=True)
    ddp_model = (DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
                 if ctx.enabled else model)
    run_settings = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **settings,
                    "world_size": ctx.world_size}

    progress = None
    if ctx.is_main and not args.no_progress:
        from tqdm.auto import tqdm
        progress = tqdm(total=args.steps, initial=step, desc=f"fine-tune {architecture}", unit="step")
    log = open(args.output / "log.jsonl", "a", encoding="utf-8") if ctx.is_main else None
    last_saved = None
    while step < args.steps:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_position(epoch, offset * args.batch_size)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                             num_workers=args.workers, drop_last=True,
                                             pin_memory=ctx.device.type == "cuda")
        for images, labels in loader:
            started = time.perf_counter()
            images = images.to(ctx.device, non_blocking=True)
            labels = labels.to(ctx.device, non_blocking=True)
            loss, terms = criterion(ddp_model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if log is not None:
                record = {"step": step, "epoch": epoch, "loss": loss.item(),
                          **{f"loss_{k}": v.item() for k, v in terms.items()},
                          "lr": [g["lr"] for g in optimizer.param_groups], "seconds": time.perf_counter() - started}
                log.write(json.dumps(record) + "\n")
                log.flush()
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if step % args.save_every == 0 or step == args.steps:
                if ctx.is_main:
                    last_saved = save_training_checkpoint(args.output, model, optimizer, scheduler, step,
                                                          run_settings)
                if ctx.enabled:
                    dist.barrier()
            if step >= args.steps:
                break
    if progress is not None:
        progress.close()
    if log is not None:
        log.close()
    if ctx.enabled and args.no_sync_bn or ctx.enabled and ctx.device.type != "cuda":
        # Unsynced BatchNorm: DDP broadcasts rank 0's running statistics before every forward; do it once more so
        # every replica ends with the statistics the checkpoint (written by rank 0) holds.
        for buffer in unwrap_model(model).buffers():
            dist.broadcast(buffer, src=0)
    if args.dump_replicas:
        from safetensors.torch import save_file
        state = {k: v.detach().cpu().contiguous() for k, v in unwrap_model(model).state_dict().items()}
        save_file(state, str(args.output / f"replica-rank{ctx.rank}.safetensors"))
    if ctx.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return last_saved


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        saved = train(args)
    except CitysegZooError as err:   # bad data, unavailable weights, bad checkpoint: a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    if saved is not None:
        print(f"saved {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
