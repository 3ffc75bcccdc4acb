"""Prefect flows: thin drivers over the stage functions of `stepvideo.stages`."""
