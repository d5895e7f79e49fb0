"""The gallery on Milvus (the ``scale`` extra: ``pip install 'imgsim[scale]'``), through ``pymilvus``'
``MilvusClient``: a Milvus server or cluster, or Milvus Lite (one local file)."""

from index.milvus.gallery import MilvusGallery

__all__ = ["MilvusGallery"]
