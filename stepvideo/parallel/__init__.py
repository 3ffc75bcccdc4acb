"""Model parallelism for the DiT: sequence parallel (DeepSpeed-Ulysses) in `sequence.py`."""

from stepvideo.parallel.sequence import SequenceParallel, init_sequence_parallel, sp_layout

__all__ = ["SequenceParallel", "init_sequence_parallel", "sp_layout"]
