from albef.data.datasets import pretrain_json, retrieval_eval  # noqa: F401
from albef.data.datasets.base import DataError

__all__ = ["DataError"]
