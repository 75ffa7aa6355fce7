"""MIL heads behind one interface (:class:`MILHead`) and one factory (:func:`get_mil_head`).

Registered names: clam_sb, clam_mb, dsmil, transmil, abmil, mean, max.
"""

# Importing the head modules registers them in MIL_HEADS.
from .base import MILHead, MILOutput, masked_max, masked_mean, masked_softmax, prepare_bags, zero_padding
from .baselines import ABMIL, MaxPoolingMIL, MeanPoolingMIL
from .clam import CLAMMB, CLAMSB, smooth_top1_svm_loss
from .dsmil import DSMIL
from .nystrom import NystromAttention, iterative_pinv
from .registry import HEAD_ARGUMENTS, MIL_HEADS, RegistryHead, get_mil_head
from .transmil import TransMIL

__all__ = [
    "ABMIL",
    "CLAMMB",
    "CLAMSB",
    "DSMIL",
    "HEAD_ARGUMENTS",
    "MIL_HEADS",
    "MILHead",
    "MILOutput",
    "MaxPoolingMIL",
    "MeanPoolingMIL",
    "NystromAttention",
    "RegistryHead",
    "TransMIL",
    "get_mil_head",
    "iterative_pinv",
    "masked_max",
    "masked_mean",
    "masked_softmax",
    "prepare_bags",
    "smooth_top1_svm_loss",
    "zero_padding",
]
