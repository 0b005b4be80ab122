"""Segmentation networks: the 3D U-Net, sliding-window inference, model cards and overlap metrics."""

from cohortscale.models.card import ModelCard, ModelCardError, Normalisation, normalise, weights_path
from cohortscale.models.inference import gaussian_importance, patch_starts, sliding_window_inference
from cohortscale.models.metrics import (
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_dice,
    mean_iou,
    overlap_table,
)
from cohortscale.models.unet import UNet3D, UNetConfig, count_parameters

__all__ = [
    "ModelCard",
    "ModelCardError",
    "Normalisation",
    "UNet3D",
    "UNetConfig",
    "confusion_matrix",
    "count_parameters",
    "dice_per_class",
    "gaussian_importance",
    "iou_per_class",
    "mean_dice",
    "mean_iou",
    "normalise",
    "overlap_table",
    "patch_starts",
    "sliding_window_inference",
    "weights_path",
]
