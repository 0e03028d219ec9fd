"""Model zoos as data (SANE §2, §4.1), one module per job: the zoo folder format (`zoo_format.py`), building zoos
(`zoo_builder.py`, options in `configs.py`), reading them (`zoo.py`), the permutation symmetries of a zoo
(`zoo_permutations.py`), converting a zoo to a tokenized Hub dataset (`convert.py`, its parquet shards in
`shard_writer.py`, sharded over processes in `sharded_conversion.py`, uploaded by `push.py`), loading that dataset
(`hub_dataset.py`, `info.py`) and cutting token windows from it (`windows.py`)."""

from .configs import ConvertConfig, ZooConfig
from .convert import ConvertResult, build_layout, convert_zoo, split_model_ids, write_zoo_dataset
from .hub_dataset import SaneZooDataset, load_zoo_dataset, load_zoo_meta
from .info import ZOO_DATASET_FORMAT_VERSION, ZOO_DATASET_TAG, SaneDatasetInfo, SplitInfo, ZooDatasetVersionError
from .push import push_zoo_dataset
from .window_loaders import StreamingWindowLoader, WindowCollator, WindowDataLoader, ZooCheckpointDataset
from .windows import ArrowTokenStore, read_windows, sample_windows
from .zoo import (
    CheckpointRecord,
    FilterReport,
    HubModelsReader,
    ModelZooReader,
    SaneHfZooReader,
    ZooFormatError,
    ZooMember,
    ZooReader,
    detect_zoo_format,
    load_pickle_checkpoint,
    load_safetensors_checkpoint,
    open_zoo,
)
from .zoo_builder import ZOO_FORMAT, ZOO_FORMAT_VERSION, build_zoo, summarize_zoo


__all__ = [
    "ZOO_FORMAT",
    "ZOO_FORMAT_VERSION",
    "ZooConfig",
    "build_zoo",
    "summarize_zoo",
    "ZOO_DATASET_FORMAT_VERSION",
    "ZOO_DATASET_TAG",
    "ArrowTokenStore",
    "StreamingWindowLoader",
    "CheckpointRecord",
    "ConvertConfig",
    "ConvertResult",
    "FilterReport",
    "HubModelsReader",
    "ModelZooReader",
    "SaneDatasetInfo",
    "SaneHfZooReader",
    "SaneZooDataset",
    "SplitInfo",
    "WindowCollator",
    "WindowDataLoader",
    "ZooCheckpointDataset",
    "ZooDatasetVersionError",
    "ZooFormatError",
    "ZooMember",
    "ZooReader",
    "build_layout",
    "convert_zoo",
    "detect_zoo_format",
    "load_pickle_checkpoint",
    "load_safetensors_checkpoint",
    "load_zoo_dataset",
    "load_zoo_meta",
    "open_zoo",
    "push_zoo_dataset",
    "read_windows",
    "sample_windows",
    "split_model_ids",
    "write_zoo_dataset",
]
