"""Training SLEM models: configs, data preparation, the training loop, metrics and export.

    from ase_slem.train import load_config, train, export_checkpoint
    result = train(load_config("configs/si_pbe_dzvp.yaml"))
    export_checkpoint(result.checkpoint, "models/si_pbe_dzvp.pt")

Command line: ``ase-slem train CONFIG [--resume]`` and ``ase-slem export CHECKPOINT -o MODEL.pt``.
"""
from .config import Config, ConfigError, config_from_dict, load_config
from .checkpoint import CheckpointError, load_checkpoint
from .data import BasisMismatchError, TrainingDataError
from .export import ExportError, export_checkpoint
from .loop import TrainingDiverged, TrainResult, train

__all__ = [
    "Config", "ConfigError", "config_from_dict", "load_config", "CheckpointError", "load_checkpoint",
    "BasisMismatchError", "TrainingDataError", "ExportError", "export_checkpoint", "TrainingDiverged",
    "TrainResult", "train",
]
