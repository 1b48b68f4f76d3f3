"""The engine's benchmark: a fixed heterogeneous request mix through diffusers' pipelines and through the engine.

Run `python -m engine.bench [--quick] [--gpu]`; see `engine/bench/run.py` for what is measured and how.
"""
