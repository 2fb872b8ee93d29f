"""Compiled (Cython) kernels; mmsb._kernels chooses among them and their numpy twins in mmsb._ref.

Importing this package sets ``OMP_WAIT_POLICY=passive`` (unless the user set it) before any extension loads
libgomp, which reads it once: idle OpenMP threads then sleep instead of spinning, so a busy machine or a second
process loses no CPU to them.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
