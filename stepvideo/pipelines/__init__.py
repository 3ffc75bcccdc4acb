"""Inference pipelines (diffusers-style: models and schedulers apart, one folder per bundle).

`t2v`: :class:`~stepvideo.pipelines.t2v.T2VPipeline`, prompts -> frames; `components`: the bundle
folder (model_index.json + one folder per component) and random components for tests.
"""
