"""MTT: matching training trajectories (Cazenavette et al., "Dataset Distillation by Matching Training
Trajectories", CVPR 2022).

Per iteration a random expert and a start epoch ``s`` drawn from ``[min_start_epoch, max_start_epoch]``; the student
starts at ``θ^D_s``, takes ``syn_steps`` steps on the synthetic set with the learned lr, and the images and lr descend
``‖θ^S_N − θ^D_{s+M}‖² / ‖θ^D_s − θ^D_{s+M}‖²`` (Eq. 1, ``M = expert_epochs``). All of it is the shared loop of
:class:`~monai_distill.methods.trajectory.TrajectoryDistiller`.
"""

from __future__ import annotations

from .base import METHODS
from .trajectory import TrajectoryDistiller

__all__ = ["MTT"]


@METHODS.register("mtt")
class MTT(TrajectoryDistiller):
    """MTT on plain SGD experts (``buffers.flat = false`` unless the config says otherwise)."""

    name = "mtt"
