"""Training configuration: pydantic models, YAML loading, ``--set`` overrides, validation.

A run is described by one YAML file with the sections below (every key optional except
``data.path``); unknown keys are errors that name the key::

    data:      {path, format, size, input_size, folds_file, fold, val_fold, split, limit,
                audit, drop_conflicts, seed, cache_dir, crop,
                extra: [{path, format, name, crop, weight, val_fraction, limit}]}
    model:     {name, pretrained, pretrained_file, init_from, head, head_hidden, dropout, options,
                freeze_backbone, unfreeze_at_epoch, unfreeze_last_n, backbone_lr_factor,
                unfreeze_warmup_epochs, precompute_blocks, precompute_augmented}
    task:      {gender, age: none|groups|regression|dex, gamma}
    optim:     {name: adam|adamw|sgd, lr, weight_decay, momentum, nesterov}
    schedule:  {name: none|cosine|step, warmup_epochs, step_size, gamma, min_lr_factor}
    train:     {epochs, batch_size, precision, seed, early_stopping, num_workers, ...}
    augment:   {recipe: [ops...], padding_mode}
    trainer:   {accelerator, devices, num_nodes, strategy, channels_last, compile, threads}
    logger:    {csv, tensorboard, mlflow, wandb, ...}

Paths are relative to the config file (``--set`` paths: to the working directory);
``$VAR`` / ``${VAR}`` expand from the environment, and ``AGEGENDER_DATA`` defaults to
``<repo>/../shared/data`` (when that does not exist either, the error says how to set it).
:func:`load_config` raises :class:`ConfigError`, whose message is one line naming every
bad key, e.g. ``optim.lr: must be > 0 (got -0.1)``.

The modules, in reading order: :mod:`.paths` (the data root and ``$VAR`` expansion);
one module per section, on what they share in :mod:`.base`: :mod:`.data`, :mod:`.model`,
:mod:`.task` (task, distill), :mod:`.optim` (optim, schedule), :mod:`.train`,
:mod:`.augment`, :mod:`.trainer` (trainer, logger); :mod:`.schema` (the root
:class:`Config` and its cross-section checks, every section's names re-exported);
:mod:`.load` (YAML files, ``--set`` overrides and the one-line error messages) and
:mod:`.checks` (pre-run checks that the files a run reads exist). Every public name is
importable from ``agegender.config``.
"""

from agegender.config.checks import check_files
from agegender.config.load import (
    ConfigError,
    apply_overrides,
    format_errors,
    load_config,
    parse_override,
    read_yaml,
    validate_config,
)
from agegender.config.paths import (
    DEFAULT_DATA_ROOT,
    PATH_KEYS,
    REPO_ROOT,
    DataRootError,
    default_data_root,
    expand_path,
)
from agegender.config.schema import (
    AUGMENT_OPS,
    STRATEGIES,
    AgeMode,
    AugmentConfig,
    AugmentOp,
    ColorJitterOp,
    Config,
    DataConfig,
    EarlyStoppingConfig,
    ExtraDataConfig,
    GaussianNoiseOp,
    GrayscaleOp,
    HFlipOp,
    LoggerConfig,
    ModelConfig,
    OptimConfig,
    RandomCropOp,
    RandomErasingOp,
    ResizedCropOp,
    RotationOp,
    ScheduleConfig,
    TaskConfig,
    TrainConfig,
    TrainerConfig,
    logged_metrics,
)

__all__ = [
    "AUGMENT_OPS",
    "DEFAULT_DATA_ROOT",
    "PATH_KEYS",
    "REPO_ROOT",
    "STRATEGIES",
    "AgeMode",
    "AugmentConfig",
    "AugmentOp",
    "ColorJitterOp",
    "Config",
    "ConfigError",
    "DataConfig",
    "DataRootError",
    "EarlyStoppingConfig",
    "ExtraDataConfig",
    "GaussianNoiseOp",
    "GrayscaleOp",
    "HFlipOp",
    "LoggerConfig",
    "ModelConfig",
    "OptimConfig",
    "RandomCropOp",
    "RandomErasingOp",
    "ResizedCropOp",
    "RotationOp",
    "ScheduleConfig",
    "TaskConfig",
    "TrainConfig",
    "TrainerConfig",
    "apply_overrides",
    "check_files",
    "default_data_root",
    "expand_path",
    "format_errors",
    "load_config",
    "logged_metrics",
    "parse_override",
    "read_yaml",
    "validate_config",
]
