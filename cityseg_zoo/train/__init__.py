"""Fine-tuning building blocks: the papers' losses, SGD + poly schedule with parameter groups, paired
augmentation, folder datasets, resumable checkpoints and DDP helpers. ``examples/finetune.py`` puts them together."""
from .augment import RandomScaleCropFlip
from .checkpoint import find_checkpoint, load_training_checkpoint, save_training_checkpoint
from .data import ResumableSampler, SegmentationPairs, cityscapes_pairs, folder_pairs
from .distributed import DistributedContext, SyncABN, convert_sync_batchnorm, init_distributed
from .losses import OUTPUT_WEIGHTS, SegmentationLoss, cross_entropy, ohem_cross_entropy, ohem_keep_mask
from .schedule import PolyDecay, Recipe, build_sgd, param_groups, poly_scheduler, recipe_for

__all__ = ["RandomScaleCropFlip", "find_checkpoint", "load_training_checkpoint", "save_training_checkpoint",
           "ResumableSampler", "SegmentationPairs", "cityscapes_pairs", "folder_pairs", "DistributedContext",
           "SyncABN", "convert_sync_batchnorm", "init_distributed", "OUTPUT_WEIGHTS", "SegmentationLoss",
           "cross_entropy", "ohem_cross_entropy", "ohem_keep_mask", "PolyDecay", "Recipe", "build_sgd",
           "param_groups", "poly_scheduler", "recipe_for"]
