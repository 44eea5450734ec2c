"""Datasets; importing the package registers the built-ins (DATASET_REGISTRY).

``webdataset_pretrain`` is the exception, registered by :mod:`albef.data.build`, which
imports it: it reads shards through :mod:`albef.data.shards`, which imports this
package's ``base`` (and so this ``__init__``) -- importing it here would close an import
circle. It can join the others once the file helpers that ``shards`` uses leave ``base``.
"""
from albef.data.datasets import (  # noqa: F401  (register)
    grounding,
    nlvr2,
    pretrain_json,
    retrieval_eval,
    visual_entailment,
    vqa,
)
from albef.data.datasets.base import DataError

__all__ = ["DataError"]
