"""Single-file checkpoints: detection, key maps, offline presets, loading and saving."""
from .load import load_components, model_from_single_file, pipeline_from_single_file, read_checkpoint  # noqa: F401
from .save import save_single_file  # noqa: F401
