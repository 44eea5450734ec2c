"""Datasets; importing the package registers the built-ins (DATASET_REGISTRY). The file
helpers they share (JSON and image reading, :class:`DataError`) are :mod:`albef.data.files`."""
from albef.data.datasets import (  # noqa: F401  (register)
    grounding,
    nlvr2,
    pretrain_json,
    retrieval_eval,
    visual_entailment,
    vqa,
    webdataset_pretrain,
)
from albef.data.files import DataError

__all__ = ["DataError"]
