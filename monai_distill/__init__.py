"""monai-distill: dataset distillation for medical images (2D and 3D) as a MONAI plugin.

Sub-packages:
    data: real datasets (MedMNIST by flag, user arrays, 3D volumes from a CSV), class-balanced sampling and
        :class:`~monai_distill.data.SyntheticSet`, the product of every method.
    networks: one factory, :func:`~monai_distill.networks.get_network`, for every architecture.
    augment: differentiable siamese augmentation (DSA) in 2D and 3D.
    methods: one registry of distillers and coresets.
    evaluation: the evaluation protocol (train K fresh networks on a set, test on the real test split).
    workflows: what the bundles instantiate.
"""

__version__ = "0.1.0"
