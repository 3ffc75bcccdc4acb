"""Prefect flows: thin drivers over `stepvideo.pipeline`'s stage functions."""
