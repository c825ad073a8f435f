"""Datasets and their on-disk cache: the lowest layer beside `models`.

Imports nothing of `study`, `scoring` or `analysis`; each dataset is one
`DatasetSpec` in `DATASETS` (datasources/registry.py).
"""

from datasources.builders import EMBEDDED_HINT, DataError
from datasources.registry import DATASETS, Dataset, DatasetSpec, dataset_spec, load_dataset

__all__ = [
    "DATASETS",
    "EMBEDDED_HINT",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "dataset_spec",
    "load_dataset",
]
