"""Histo-DD: dataset distillation for histopathology patches (Cong et al., seed 003, §3 and Algorithm 1).

Layer-wise gradient matching (Eq. 1, ``Dis`` = L1, cross-entropy loss) between the real patches D and the synthetic
patches P of every class, with three ingredients on top of DC/DSA, each of which can be switched off (ablation):

* **model augmentation** (``model_augment``): each of the K outer steps takes one network of a pool S of networks
  pretrained on the real patches and perturbs it by a filter-normalised Gaussian direction, θ + α·d (Eq. 2-3,
  :mod:`~monai_distill.methods.model_pool`); without it every outer step starts from a fresh random network (DC);
* **stain normalisation** (``stain``): differentiable Macenko normalisation towards a template fitted offline
  (:class:`~monai_distill.augment.MacenkoNormalizer`), integrated into DSA as one more augmentation of the siamese
  draw (§3.1 "we integrate DSA with stain normalisation", Eq. 4; Table 2 lists it beside rotate/flip/scale): each
  class-step applies one operation, drawn uniformly from DSA's groups and stain normalisation, to both sides; with
  DSA off, stain normalisation is applied at every step. The template is the real patch whose mean/std are closest
  to the dataset's, or a saved template file;
* **DSA** (``dsa``): one siamese augmentation draw per class and step on both sides (Zhao & Bilen 2021).

Algorithm 1, in the options' names: ``iterations`` = K outer steps (200/500/1000 for ipc 10/20/50); in each, a
pool network is perturbed and then ``outer_loop`` = U times (100): one synthetic update on Σ_c Dis(∇θL(D_A^c),
∇θL(P_A^c)) followed by ``inner_loop`` (1) SGD step(s) of the network on a real batch, ``L(D, M_θ)``. The synthetic
patches start from random real patches (the random coreset of the same seed) and are learned with SGD at
``lr_img`` (the paper: 0.5, and 5e-3 for TCGA-IDH; the image gradient of the L1 distance grows with the network,
so the value depends on the setting). ResNetAP-10 is the paper's backbone (``arch``).

The method only needs a :class:`~monai_distill.data.RealDataset` of patches, so the same class distils one slide's
patches into that slide's synthetic bag: only the classes present in the patches are distilled, a caller may set
``distiller.pool`` to a :class:`~monai_distill.methods.ModelPool` trained on the whole cohort before
:meth:`init_synthetic` (one pool for every slide instead of one per slide), and ``stain_template`` names the
cohort's template.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..augment import MacenkoNormalizer, StainTemplate
from .base import METHODS
from .gradient_matching import GradientMatching
from .image_distiller import nearest_ipc
from .model_pool import ModelPool, default_cache_dir, perturb_

__all__ = ["HISTODD_OUTER_STEPS", "HistoDD"]

logger = logging.getLogger("monai_distill")

# K (outer steps) per ipc, Histo-DD §4.2.
HISTODD_OUTER_STEPS: dict[int, int] = {10: 200, 20: 500, 50: 1000}
_COMMON = {
    "inner_loop": 1,
    "lr_img": 0.5,
    "lr_net": 0.01,
    "distance": "l1",
    "dsa": True,
    "stain": True,
    "stain_template": None,
    "model_augment": True,
    "pool_size": 5,
    "perturb_alpha": 0.01,
    "pool_dir": None,
    "cache_pool": True,
}


# lr_img chosen on the val split of the H&E patch task per distillation network (the L1 distance sums over every
# weight, so the patches' gradient grows with the network), quick, 2 seeds, mean val balanced accuracy:
# - ConvNet width 16: 0.1, 82.5 % vs 79.1 (0.02), 78.2 (5e-3) and 78.1 (1e-3) (benchmarks/results/histodd_lr_img.md).
# - ResNetAP-10 width 32: the preset's 5e-3, 88.3 % vs 88.2 (0.02) and 87.5 (1e-3)
#   (benchmarks/results/histodd_lr_img_resnetap10.md); other networks keep it too.
_LR_IMG_BY_ARCH = {"convnet": 0.1}
# The paper's K divided by this per preset: quick makes 10 x 10 = 100 image updates at ipc 10, standard 50 x 20 = 1000
# (the paper: 200 x 100 = 20 000).
_K_DIVISOR = {"quick": 20, "standard": 4}


@METHODS.register("histodd")
class HistoDD(GradientMatching):
    """Histo-DD (see the module docstring). Options beyond :class:`GradientMatching`'s:

    ``stain`` / ``model_augment`` / ``dsa`` (the ablation switches), ``stain_template`` (path of a saved
    :class:`~monai_distill.augment.StainTemplate`; default: fitted on the real patches), ``pool_size``,
    ``pool_epochs``, ``perturb_alpha`` (α of Eq. 3), ``pool_dir`` (cache directory of the pool; default
    ``$MONAI_DISTILL_CACHE`` or ``~/.cache/monai_distill``), ``cache_pool`` (false: keep the pool in memory only).
    """

    name = "histodd"
    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {**_COMMON, "outer_loop": 100, "batch_real": 128, "batch_train": 128, "pool_epochs": 10},
        # quick: the same algorithm with small K, U and pool for a 2-core CPU. lr_img: see _LR_IMG_BY_ARCH.
        "quick": {**_COMMON, "lr_img": 5e-3, "outer_loop": 10, "batch_real": 32, "batch_train": 64, "pool_size": 2,
                  "pool_epochs": 3},
        # standard (benchmarks): 10x quick's image updates (50 x 20 at ipc 10), a larger pool.
        "standard": {**_COMMON, "lr_img": 5e-3, "outer_loop": 20, "batch_real": 64, "batch_train": 64, "pool_size": 3,
                     "pool_epochs": 5},
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.options["stain"] and self.real.in_channels != 3:
            raise ValueError(
                f"histodd: stain normalisation needs RGB H&E patches, but {self.real.name} has "
                f"{self.real.in_channels} channel(s); pass method_options stain=false."
            )
        self.stain: MacenkoNormalizer | None = None
        self.pool: ModelPool | None = None
        self._real_stained: torch.Tensor | None = None
        self._stain_warned = False

    def ipc_defaults(self, ipc: int) -> dict[str, Any]:
        """K per ipc (Histo-DD §4.2), divided per preset."""
        k = nearest_ipc(HISTODD_OUTER_STEPS, ipc)
        return {"iterations": max(1, k // _K_DIVISOR.get(self._preset_name, 1))}

    def default_options(self) -> dict[str, Any]:
        """The preset's defaults with the val-chosen ``lr_img`` of the distillation network, if it has one."""
        opts = super().default_options()
        arch = str(self.cfg.arch).lower()
        if self._preset_name != "paper" and arch in _LR_IMG_BY_ARCH:
            opts["lr_img"] = _LR_IMG_BY_ARCH[arch]
        return opts

    @property
    def _preset_name(self) -> str:
        return self.cfg.preset.name if self.cfg.preset is not None else "paper"

    # ------------------------------------------------------------------ set-up
    def init_synthetic(self) -> None:
        super().init_synthetic()  # first, so the init is the random coreset of the same seed
        if self.options["stain"]:
            self._fit_stain()
        if self.options["model_augment"] and self.pool is None:  # a caller may share one pool (per-slide bags)
            self.pool = self.build_pool()

    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        return x * torch.tensor(self.real.std).view(shape) + torch.tensor(self.real.mean).view(shape)

    def _fit_stain(self) -> None:
        """The normaliser, and the real patches normalised once (they are constants of the loss)."""
        path = self.options["stain_template"]
        template = StainTemplate.load(path) if path else StainTemplate.fit_dataset(
            self._rgb(self.real.images), source=f"{self.real.name}/train"
        )
        self.stain = MacenkoNormalizer(template)
        out = torch.empty_like(self.real.images)
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always", RuntimeWarning)
            for i in range(0, len(self.real), 512):
                x = self.real.images[i : i + 512]
                out[i : i + 512] = self.stain.apply_normalised(x, self.real.mean, self.real.std)
        if caught:
            logger.warning("histodd: %d batch(es) of real patches held patches kept unnormalised, e.g. %s",
                           len(caught), caught[0].message)
        self._real_stained = out

    def build_pool(self) -> ModelPool:
        """The pool S of networks pretrained on this distiller's real patches (trained once, then cached).

        The per-slide bags build it from a distiller over a sample of the whole cohort and hand it to every slide's
        distiller (``distiller.pool``).
        """
        o, p = self.options, self.cfg.preset
        cache = None if not o["cache_pool"] else (o["pool_dir"] or default_cache_dir())
        describe = {
            "arch": self.cfg.arch,
            "width": p.width,
            "depth": p.depth,
            "norm": p.norm,
        }
        return ModelPool(self.net_factory, self.real.images, self.real.labels, int(o["pool_size"]),
                         int(o["pool_epochs"]), p.eval_lr, p, self.cfg.seed, self.device, cache_dir=cache,
                         describe=describe)

    def meta(self) -> dict[str, Any]:
        meta = super().meta()
        meta["stain_template"] = self.stain.template.to_dict() if self.stain else None
        meta["model_pool"] = self.pool.key if self.pool else None
        return meta

    # ------------------------------------------------------------------ the hooks of the gradient-matching loop
    def outer_network(self) -> torch.nn.Module:
        """A pool network perturbed by α·d (Eq. 2-3); a fresh random network without model augmentation."""
        if self.pool is None:
            return self.fresh_network()
        i = int(torch.randint(len(self.pool), (1,), generator=self.generator))
        return perturb_(self.pool.network(i, self.device), float(self.options["perturb_alpha"]), self.generator)

    def network_optimizer(self, net: torch.nn.Module) -> torch.optim.Optimizer:
        """Fine-tuning a pretrained network: the protocol's SGD (momentum, weight decay) at ``lr_net``."""
        p = self.cfg.preset
        return torch.optim.SGD(net.parameters(), lr=float(self.options["lr_net"]), momentum=p.momentum,
                               weight_decay=p.weight_decay)

    def update_network(self, net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """Algorithm 1, "Update M_θ ← L(D, M_θ)": SGD step(s) on real batches with per-image DSA."""
        real = self.real.images
        n = real.shape[0]
        for _ in range(int(self.options["inner_loop"])):
            idx = torch.randperm(n, generator=self.generator)[: int(self.options["batch_train"])]
            x = real[idx].to(self.device)
            if self.augment is not None:
                x = self.augment(x, generator=self.generator)
            loss = F.cross_entropy(net(x), self.real.labels[idx].to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def _stain_drawn(self) -> bool:
        """Whether this class-step's augmentation is stain normalisation: one of DSA's groups + 1, uniformly."""
        if self.stain is None:
            return False
        if self.augment is None:
            return True
        return int(torch.randint(len(self.augment.groups) + 1, (1,), generator=self.generator)) == 0

    def class_pair(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and synthetic patches of class ``c`` through one siamese draw (stain normalisation or a DSA op)."""
        idx = self.sampler.sample_indices(c, int(self.options["batch_real"]), self.generator)
        x_syn = self.class_images(c)
        if self._stain_drawn():
            return self._real_stained[idx].to(self.device), self._normalise_stain(x_syn)
        return self.siamese(self.real.images[idx].to(self.device), x_syn)

    def _normalise_stain(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            out = self.stain.apply_normalised(x, self.real.mean, self.real.std)
        if caught and not self._stain_warned:
            self._stain_warned = True
            logger.warning("histodd: %s (synthetic patches; reported once)", caught[0].message)
        return out

    # ------------------------------------------------------------------ resume
    def _pool_id(self) -> dict[str, Any] | None:
        if self.pool is None:
            return None
        return {"key": self.pool.key, "size": len(self.pool), "alpha": self.options["perturb_alpha"]}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "model_pool": self._pool_id()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("model_pool") != self._pool_id():
            raise ValueError(f"the checkpoint was distilled with model pool {state.get('model_pool')}, this run "
                             f"uses {self._pool_id()} (different data, network or pool settings).")
        super().load_state_dict(state)
