"""Segmentation networks: the 3D U-Net, sliding-window inference, model cards and loading, overlap metrics,
and the default model's label scheme, training data and training run."""

from cohortscale.models.card import ModelCard, ModelCardError, Normalisation, normalise, weights_path
from cohortscale.models.dataset import Example, TrainingDataError, split_by_participant, training_examples
from cohortscale.models.default import (
    DEFAULT_CLASSES,
    VERTEBRAL_BODY_ID,
    DefaultTrainingConfig,
    TrainingResult,
    class_lookup,
    default_card,
    scheme_labels,
    train_default_model,
)
from cohortscale.models.inference import gaussian_importance, patch_starts, sliding_window_inference
from cohortscale.models.loading import (
    LoadedModel,
    ModelLoadError,
    cached_model,
    clear_model_cache,
    load_model,
    segment_volume,
    torch_device,
)
from cohortscale.models.metrics import (
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_dice,
    mean_iou,
    overlap_table,
)
from cohortscale.models.preprocess import (
    PreparedGeometry,
    assemble_channels,
    channel_lookup,
    label_lookup,
    prepare_input,
    read_fused,
    restore,
    spacing_from_affine,
)
from cohortscale.models.sampling import PatchSampler
from cohortscale.models.train import TrainConfig, TrainHistory, dice_ce_loss, train
from cohortscale.models.unet import UNet3D, UNetConfig, count_parameters

__all__ = [
    "DEFAULT_CLASSES",
    "VERTEBRAL_BODY_ID",
    "DefaultTrainingConfig",
    "Example",
    "LoadedModel",
    "ModelCard",
    "ModelCardError",
    "ModelLoadError",
    "Normalisation",
    "PatchSampler",
    "PreparedGeometry",
    "TrainConfig",
    "TrainHistory",
    "TrainingDataError",
    "TrainingResult",
    "UNet3D",
    "UNetConfig",
    "assemble_channels",
    "cached_model",
    "channel_lookup",
    "class_lookup",
    "clear_model_cache",
    "confusion_matrix",
    "count_parameters",
    "default_card",
    "dice_ce_loss",
    "dice_per_class",
    "gaussian_importance",
    "iou_per_class",
    "label_lookup",
    "load_model",
    "mean_dice",
    "mean_iou",
    "normalise",
    "overlap_table",
    "patch_starts",
    "prepare_input",
    "read_fused",
    "restore",
    "scheme_labels",
    "segment_volume",
    "sliding_window_inference",
    "spacing_from_affine",
    "split_by_participant",
    "torch_device",
    "train",
    "train_default_model",
    "training_examples",
    "weights_path",
]
