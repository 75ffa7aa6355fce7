"""The trust card of a synthetic set: ``card.json``, ``card.md`` and ``card_neighbours.png`` beside ``synthetic.pt``.

A card holds three kinds of evidence (see the package docstring of :mod:`monai_distill.trust` for what it does not
prove):

* **reproducibility**: the settings hash, config, seeds, method and options, package versions, device, the data
  fingerprint (file digests, split sizes), the expert buffer's identity and the wall time;
* **nearness**: per synthetic image, the distance to its nearest real training images in pixel space and in the
  embedding of a network trained on the real data, and the SSIM to the pixel-nearest one, next to the same figures
  for an equal-size random real subset (leave-one-out: its images' nearest *other* training image), and a near-copy
  flag (:mod:`~monai_distill.trust.nearness`);
* **membership inference**: loss and calibrated attacks (:mod:`~monai_distill.trust.membership`) on the networks
  trained on the synthetic set (the evaluation networks when the workflow evaluates), on networks trained on an
  equal-size real subset, and on a network trained on the full train split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..augment import DiffAugment
from ..checks import OptionError
from ..data import RealDataset, SyntheticSet
from ..data.synthetic import image_grid_png
from ..evaluation import classification_metrics, map_batches, predict, train_network
from ..networks import get_network
from ..presets import Preset
from ..utils import atomic_path, atomic_torch_save, atomic_write_json
from .membership import AttackResult, attack, per_example_loss
from .nearness import nearest_neighbours, pixel_nearness, ssim_pairs, summarise
from .provenance import data_fingerprint, package_versions, settings_hash

__all__ = ["CARD_FILES", "CardOptions", "TrustCard", "write_card"]

CARD_FILES = ("card.json", "card.md", "card_neighbours.png")


@dataclasses.dataclass
class CardOptions:
    """Settings of the card (``--card_options`` in the bundles).

    Attributes:
        neighbours: nearest real images listed (and drawn) per synthetic image.
        quantile: near-copy threshold as this quantile of real-to-real leave-one-out distances.
        n_reference: real training images whose leave-one-out distances set the threshold.
        n_attack: members and non-members drawn per attack (fewer when a split is smaller).
        n_boot: bootstrap resamples of the attack intervals.
        real_epochs: epochs of the network trained on the real train split (the embedding and the full-data
            target) and of the calibration reference; default a fifth of the preset's ``embed_epochs`` (at least 1),
            which keeps the card within a tenth of a ``quick`` run. Trajectory methods use an expert instead.
        subset_models: networks trained on the equal-size real subset (the protocol's epochs).
        max_real_images: the real-data network trains on at most this many train images (a seeded random draw;
            the attack's members come from them), which bounds the card's cost on large or 3D sets.
        target_models: networks trained on the synthetic set for the attack when no evaluation ran (the
            workflows otherwise attack their evaluation networks).
        attack: run the membership attacks (off: nearness and reproducibility only).
        max_png: synthetic images drawn in ``card_neighbours.png``.
        cache_dir: where the networks trained on real data only (full-data target, calibration reference, real
            subset) are kept and reused by later cards of the same data, seed and preset (the distillation bundles
            use ``<buffer_dir>/card_networks``); ``None``: trained for every card.
    """

    neighbours: int = 3
    quantile: float = 0.01
    n_reference: int = 200
    n_attack: int = 200
    n_boot: int = 200
    real_epochs: int | None = None
    subset_models: int = 1
    max_real_images: int = 500
    target_models: int = 1
    attack: bool = True
    max_png: int = 20
    cache_dir: str | None = None

    @classmethod
    def from_dict(cls, options: Mapping[str, Any] | None, label: str = "--card_options") -> CardOptions:
        """Build from a mapping; an unknown key or a value of the wrong type is an :class:`OptionError`."""
        options = dict(options or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise OptionError(f"{label}: unknown key(s) {unknown}; valid keys: {', '.join(fields)}.")
        out = cls()
        for key, value in options.items():
            default = getattr(out, key)
            try:
                if key == "real_epochs":
                    value = None if value is None else int(value)
                elif key == "cache_dir":
                    value = None if value in (None, "") else str(value)
                elif isinstance(default, bool):
                    value = str(value).lower() in ("1", "true", "yes", "on") if not isinstance(value, bool) else value
                else:
                    value = type(default)(value)
            except (TypeError, ValueError):
                raise OptionError(f"{label} '{key}': expected {type(default).__name__}, got {value!r}.") from None
            if key == "quantile" and not 0.0 <= value < 1.0:
                raise OptionError(f"{label} 'quantile': expected a value in [0, 1), got {value}.")
            if isinstance(value, int) and not isinstance(value, bool) and value < (0 if key == "n_boot" else 1):
                raise OptionError(f"{label} '{key}': expected a positive integer, got {value}.")
            setattr(out, key, value)
        return out


class TrustCard:
    """Builds the card of one synthetic set against the real data it came from.

    Use :meth:`observe` as the evaluation's ``on_model`` hook (it records each synthetic-trained network's losses on
    the attack's members and non-members, so the attack reuses the evaluation networks), then :meth:`build`.

    Args:
        syn: the synthetic set (images in the normalised units of ``train``).
        train: the real train split it was made from (its images are the members).
        heldout: real images never used to train or distil (the test split): the non-members.
        reference: held-out real images disjoint from ``heldout`` that train the calibration reference (the val
            split); ``None`` skips the calibrated attack.
        arch: network name of the attack targets and the real-data network (registry name or registered label).
        preset: protocol hyper-parameters (width, epochs, lr, DSA).
        seed: seed of every draw and network.
        device: where networks train.
        options: :class:`CardOptions` or a mapping of its fields.
    """

    def __init__(self, syn: SyntheticSet, train: RealDataset, heldout: RealDataset, reference: RealDataset | None,
                 arch: str, preset: Preset, seed: int, device: torch.device,
                 options: CardOptions | Mapping[str, Any] | None = None) -> None:
        self.syn, self.train, self.heldout, self.reference = syn, train, heldout, reference
        self.arch, self.preset, self.seed, self.device = arch, preset, int(seed), device
        self.options = options if isinstance(options, CardOptions) else CardOptions.from_dict(options)
        gen = torch.Generator().manual_seed(self.seed + 7919)
        n = self.options.n_attack
        # The real-data network's training images; the members are drawn from them, so that every attack target
        # (synthetic, trained on data distilled from all of train; full data, trained on this draw) saw them.
        self.pool = torch.randperm(len(train), generator=gen)[: min(self.options.max_real_images, len(train))]
        self.nonmembers = torch.randperm(len(heldout), generator=gen)[: min(n, len(heldout))]
        self.members = self._same_class_mix(self.pool, n)
        self.subset = self._balanced_subset(gen)
        self.can_attack = self.options.attack and not (train.is_multilabel or heldout.is_multilabel)
        self.own = self._own_images()
        self._syn_losses: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._own_losses: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.seconds: dict[str, float] = {"observe": 0.0}
        self._full_net: torch.nn.Module | None = None
        self._full_label = ""

    def _same_class_mix(self, pool: torch.Tensor, n: int) -> torch.Tensor:
        """Up to ``n`` of ``pool`` (in its order) with the non-members' class proportions.

        Medical train and test splits often differ in class balance (PneumoniaMNIST: 74 % vs 62 % pneumonia), and a
        network's loss differs by class, so members drawn at the train split's mix would be told from non-members by
        their class alone: an attack AUC above 0.5 with no membership signal. Matching the mix removes that.
        """
        if self.train.is_multilabel or self.heldout.is_multilabel or len(self.nonmembers) == 0:
            return pool[:n]
        labels = self.train.labels[pool]
        out_counts = torch.bincount(self.heldout.labels[self.nonmembers], minlength=self.train.num_classes).double()
        have = torch.bincount(labels, minlength=self.train.num_classes).double()
        # The largest total whose per-class share fits what the pool holds of every class.
        share = out_counts / out_counts.sum()
        total = min(float(n), float(min((have[c] / share[c]) for c in range(len(share)) if share[c] > 0)))
        want = torch.floor(share * total + 1e-9).long()
        parts = [pool[labels == c][: int(want[c])] for c in range(self.train.num_classes)]
        return torch.cat(parts)

    def _own_images(self) -> torch.Tensor | None:
        """Train indices of the real images the set holds (a coreset's ``indices``) or started from (a distilled
        set's ``init_indices`` under real initialisation): the patients it exposes most directly."""
        meta = self.syn.meta
        idx = meta.get("indices")
        if idx is None and (meta.get("options") or {}).get("init", "real") == "real":
            idx = meta.get("init_indices")
        if not idx:
            return None
        idx = torch.as_tensor(idx, dtype=torch.long)
        return idx if int(idx.max()) < len(self.train) else None

    # ------------------------------------------------------------------ networks
    def _balanced_subset(self, gen: torch.Generator) -> torch.Tensor:
        """Train indices with the synthetic set's class counts (an equal-size real subset)."""
        counts = torch.bincount(self.syn.hard_labels.cpu(), minlength=self.train.num_classes).tolist()
        labels = self.train.labels if not self.train.is_multilabel else self.train.labels.argmax(dim=1)
        parts = []
        for c, k in enumerate(counts):
            idx = torch.nonzero(labels == c).flatten()
            parts.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def _network(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        t = self.train
        return get_network(self.arch, t.spatial_dims, t.in_channels, t.num_classes, t.spatial_size,
                           width=self.preset.width, depth=self.preset.depth, norm=self.preset.norm)

    def _trained(self, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int,
                 real: tuple[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """A network trained with the protocol's loop. ``real = (split, indices)`` marks real images: such a
        network depends on the data, not on the set, so it is kept in ``cache_dir`` and reused by later cards."""
        net = self._network(seed)
        path = self._cache_path(real, epochs, seed) if real is not None else None
        if path is not None and path.is_file():
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.to(self.device)
        augment = DiffAugment(self.preset.dsa_strategy) if self.preset.dsa else None
        gen = torch.Generator().manual_seed(seed)
        net = train_network(net, images, labels, epochs, self.preset.eval_lr, self.preset, gen, self.device,
                            augment=augment)
        if path is not None:
            atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
        return net

    def _cache_path(self, real: tuple[str, torch.Tensor], epochs: int, seed: int) -> Path | None:
        if not self.options.cache_dir:
            return None
        split, idx = real
        key = settings_hash({"data": data_fingerprint([self.train, self.reference, self.heldout]), "split": split,
                             "indices": hashlib.sha256(idx.cpu().numpy().tobytes()).hexdigest(), "epochs": epochs,
                             "seed": seed, "arch": self.arch, "preset": self.preset.to_dict()})
        return Path(self.options.cache_dir) / f"{self.train.name}-{split}-{key}.pt"

    def _losses(self, net: torch.nn.Module, idx_in: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx_in = self.members if idx_in is None else idx_in
        return (per_example_loss(net, self.train.images[idx_in], self.train.labels[idx_in], self.device),
                per_example_loss(net, self.heldout.images[self.nonmembers], self.heldout.labels[self.nonmembers],
                                 self.device))

    def observe(self, k: int, net: torch.nn.Module) -> None:
        """``on_model`` hook of :func:`~monai_distill.evaluation.evaluate_models`: record a synthetic-trained
        network's losses on the members and non-members."""
        if self.can_attack:
            tick = time.perf_counter()
            self._syn_losses.append(self._losses(net))
            if self.own is not None:
                self._own_losses.append(self._losses(net, self.own))
            self.seconds["observe"] += time.perf_counter() - tick

    def real_network(self, net: torch.nn.Module | None, label: str) -> None:
        """Use ``net``, already trained on the whole train split (an expert's last epoch), as the embedding and the
        full-data target instead of training one; ``label`` says what it is in the card."""
        self._full_net, self._full_label = net, label

    def _real_epochs(self) -> int:
        return int(self.options.real_epochs or max(1, self.preset.embed_epochs // 5))

    @property
    def observed(self) -> int:
        """How many synthetic-trained networks :meth:`observe` has seen."""
        return len(self._syn_losses)

    def train_targets(self, num_models: int, epochs: int | None = None) -> None:
        """Train ``num_models`` networks on the synthetic set (when no evaluation ran to observe)."""
        if not self.can_attack:
            return
        epochs = int(epochs or self.preset.eval_epochs)
        tick = time.perf_counter()
        for k in range(num_models):
            net = self._trained(self.syn.images.detach(), self.syn.labels.detach(), epochs, self.seed * 1000 + k)
            self.observe(k, net)
        self.seconds["targets"] = time.perf_counter() - tick - self.seconds["observe"]

    # ------------------------------------------------------------------ the card
    def _attacks(self, losses: list[tuple[torch.Tensor, torch.Tensor]], ref: tuple[torch.Tensor, torch.Tensor] | None,
                 seed: int) -> dict[str, Any]:
        li = torch.stack([a for a, _ in losses]).mean(dim=0).numpy()
        lo = torch.stack([b for _, b in losses]).mean(dim=0).numpy()
        out: dict[str, Any] = {"n_networks": len(losses)}
        run = {"loss": (-li, -lo)}
        if ref is not None:
            run["calibrated"] = (ref[0].numpy() - li, ref[1].numpy() - lo)
        for name, (a, b) in run.items():
            res: AttackResult = attack(a, b, n_boot=self.options.n_boot, seed=seed)
            out[name] = res.to_dict()
        return out

    def _membership(self, full_net: torch.nn.Module) -> dict[str, Any]:
        opts = self.options
        real_epochs = self._real_epochs()
        ref_net = None
        if self.reference is not None and len(self.reference):
            # The val split is small, so the reference gets the preset's full embedding epochs at little cost.
            ref_epochs = int(self.preset.embed_epochs)
            ref_net = self._trained(self.reference.images, self.reference.labels, ref_epochs, self.seed + 31,
                                    real=(self.reference.split, torch.arange(len(self.reference))))
        ref = self._losses(ref_net) if ref_net is not None else None
        ref_sub = self._losses(ref_net, self.subset) if ref_net is not None else None
        out: dict[str, Any] = {
            "members": (f"{len(self.members)} images of the train split (the source data), drawn with the "
                        "non-members' class mix"),
            "nonmembers": f"{len(self.nonmembers)} images of the {self.heldout.split} split (never trained on)",
            "reference": (f"1 network trained on the {self.reference.split} split ({len(self.reference)} images, "
                          f"{ref_epochs} epochs)") if ref_net is not None else None,
        }
        if self._syn_losses:
            out["synthetic"] = self._attacks(self._syn_losses, ref, self.seed)
        if self._own_losses:
            ref_own = self._losses(ref_net, self.own) if ref_net is not None else None
            kind = "holds" if self.syn.meta.get("indices") is not None else "was initialised from"
            out["synthetic_own"] = {**self._attacks(self._own_losses, ref_own, self.seed + 3),
                                    "members": f"the {len(self.own)} real images the set {kind}"}
        sub_losses, sub_metrics = [], []
        x, y = self.train.images[self.subset], self.train.labels[self.subset]
        tick = time.perf_counter()
        for k in range(opts.subset_models):
            net = self._trained(x, y, self.preset.eval_epochs, self.seed * 1000 + 500 + k, real=("train", self.subset))
            sub_losses.append(self._losses(net, self.subset))
            sub_metrics.append(classification_metrics(predict(net, self.heldout.images, self.device),
                                                      self.heldout.labels))
        self.seconds["subset_networks"] = time.perf_counter() - tick
        out["real_subset"] = {**self._attacks(sub_losses, ref_sub, self.seed + 1),
                              "members": f"the subset's own {len(self.subset)} images",
                              "heldout_balanced_acc": float(np.mean([m["balanced_acc"] for m in sub_metrics]))}
        out["full_data"] = {**self._attacks([self._losses(full_net)], ref, self.seed + 2),
                            "network": self._full_label or (f"trained {real_epochs} epoch(s) for the card on "
                                                            f"{len(self.pool)} train images"),
                            "n_train": len(self.train) if self._full_net is not None else len(self.pool)}
        return out

    def _nearness(self, full_net: torch.nn.Module | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        opts, t = self.options, self.train
        syn = self.syn.images.detach().float().cpu()
        near = pixel_nearness(syn, t.images, opts.neighbours, opts.quantile, opts.n_reference, self.seed + 104729)
        sub = nearest_neighbours(t.images[self.subset], t.images, k=1, exclude=self.subset)
        ssim_sub = ssim_pairs(t.images[self.subset], t.images[sub.indices[:, 0]], near.data_range)
        out = near.summary(opts.quantile)
        out["real_subset"] = {"pixel_rms": summarise(sub.distances[:, 0]), "ssim": summarise(ssim_sub),
                              "n_near_copies_loo": int((sub.distances[:, 0] <= near.threshold).sum())}
        per_image = {"pixel_rms": near.neighbours.distances[:, 0], "ssim": near.ssim,
                     "indices": near.neighbours.indices, "distances": near.neighbours.distances, "flags": near.flags}
        if full_net is not None and hasattr(full_net, "embed"):
            full_net.eval()
            with torch.no_grad():
                emb_t = map_batches(full_net.embed, t.images, self.device)
                emb_s = map_batches(full_net.embed, syn, self.device)
            sample = near.sample
            e_syn = nearest_neighbours(emb_s, emb_t, k=1, metric="cosine")
            e_loo = nearest_neighbours(emb_t[sample], emb_t, k=1, exclude=sample, metric="cosine")
            e_sub = nearest_neighbours(emb_t[self.subset], emb_t, k=1, exclude=self.subset, metric="cosine")
            out["synthetic"]["embedding_cosine"] = summarise(e_syn.distances[:, 0])
            out["real_subset"]["embedding_cosine"] = summarise(e_sub.distances[:, 0])
            out["real_to_real"]["embedding_cosine"] = summarise(e_loo.distances[:, 0])
            per_image["embedding_cosine"] = e_syn.distances[:, 0]
        return out, per_image

    def build(self, settings: Mapping[str, Any], provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Train the real-data networks, measure nearness and the attacks, and return the card as a dict.

        Args:
            settings: what the set depends on (the run's config, the expert buffer's identity); hashed with the
                data fingerprint into ``hash``.
            provenance: further facts recorded as they are (device, wall time, seeds).
        """
        start = time.perf_counter()
        fingerprint = data_fingerprint([self.train, self.reference, self.heldout])
        real_epochs = self._real_epochs()
        tick = time.perf_counter()
        x, y = self.train.images[self.pool], self.train.labels[self.pool]
        full_net = self._full_net or self._trained(x, y, real_epochs, self.seed + 17, real=("train", self.pool))
        self.seconds["real_network"] = time.perf_counter() - tick
        tick = time.perf_counter()
        nearness, per_image = self._nearness(full_net)
        self.seconds["nearness"] = time.perf_counter() - tick
        tick = time.perf_counter()
        membership = self._membership(full_net) if self.can_attack else {
            "skipped": "multi-label data" if self.options.attack else "attack off (card_options.attack false)"}
        self.seconds["membership"] = time.perf_counter() - tick
        meta = self.syn.meta
        card = {
            "hash": settings_hash({"settings": dict(settings), "data": fingerprint}),
            "reproducibility": {
                "method": meta.get("method"), "dataset": meta.get("dataset"), "ipc": self.syn.ipc,
                "n_images": len(self.syn), "seed": meta.get("seed"), "options": meta.get("options"),
                "settings": dict(settings), "data": fingerprint, "packages": package_versions(),
                **dict(provenance or {}),
            },
            "nearness": nearness,
            "per_image": [
                {"index": i, "label": int(self.syn.hard_labels[i]), "pixel_rms": float(per_image["pixel_rms"][i]),
                 "ssim": float(per_image["ssim"][i]), "near_copy": bool(per_image["flags"][i]),
                 "nearest_train": per_image["indices"][i].tolist(),
                 **({"embedding_cosine": float(per_image["embedding_cosine"][i])}
                    if "embedding_cosine" in per_image else {})}
                for i in range(len(self.syn))
            ],
            "membership": membership,
            "card_seconds": None,
            "seconds": self.seconds,
        }
        self._per_image = per_image
        # The card's own work: building it and scoring the networks it observed (not training those networks).
        card["card_seconds"] = time.perf_counter() - start + self.seconds["observe"] + self.seconds.get("targets", 0.0)
        return card

    def draw(self, path: str | Path) -> Path:
        """``card_neighbours.png``: each synthetic image (up to ``max_png``) beside its nearest real images."""
        per_image, t = self._per_image, self.train
        shape = (1, -1) + (1,) * (t.images.ndim - 2)
        mean, std = torch.tensor(t.mean).view(shape), torch.tensor(t.std).view(shape)
        show = self.syn.denormalised()
        rows, names = [], []
        names_of = t.class_names or [str(c) for c in range(t.num_classes)]
        for i in range(min(len(self.syn), self.options.max_png)):
            idx = per_image["indices"][i]
            real = (t.images[idx] * std + mean).clamp(0, 1)
            rows.append([show[i], *real])
            flag = " NEAR-COPY" if per_image["flags"][i] else ""
            names.append(f"#{i} {names_of[int(self.syn.hard_labels[i])]}: d={float(per_image['pixel_rms'][i]):.3f}, "
                         f"SSIM {float(per_image['ssim'][i]):.2f}{flag}")
        return image_grid_png(rows, path, names)


def _fmt_ci(res: Mapping[str, Any], key: str, ci: str) -> str:
    return f"{res[key]:.3f} [{res[ci][0]:.3f}, {res[ci][1]:.3f}]"


def card_markdown(card: Mapping[str, Any]) -> str:
    """The card as Markdown (``card.md``)."""
    r, n, m = card["reproducibility"], card["nearness"], card["membership"]
    lines = [
        f"# Trust card: {r.get('method')} on {r.get('dataset')}, ipc {r.get('ipc')} ({r.get('n_images')} images)",
        "",
        f"Settings hash `{card['hash']}` (config, data fingerprint and expert buffer; not machine or time). "
        f"Card built in {card['card_seconds']:.1f} s.",
        "",
        "## Reproducibility",
        "",
        f"- seed {r.get('seed')}, device {r.get('device')}, distillation wall time "
        f"{r.get('distill_seconds') if r.get('distill_seconds') is not None else 'not recorded'} s",
        f"- expert buffer: {r.get('buffers') or 'none'}",
        "- data: " + ", ".join(f"`{k}` sha256 {str(v)[:16]}" for k, v in r["data"]["files"].items())
        + "; " + ", ".join(f"{s} {v['n_images']} images" for s, v in r["data"]["splits"].items()),
        "- packages: " + ", ".join(f"{k} {v}" for k, v in r["packages"].items()),
        "",
        "## Nearness to the real training images",
        "",
        f"Near-copy rule: {n['threshold_rule']} = {n['pixel_threshold']:.4f}. "
        f"**{n['n_near_copies']} of {r.get('n_images')} synthetic images are near-copies**"
        + (f" (indices {n['near_copies'][:20]})." if n["n_near_copies"] else "."),
        "",
        "| images | pixel RMS to nearest (min / median) | SSIM to nearest (median / max) "
        "| embedding cosine (min / median) |",
        "|---|---|---|---|",
    ]
    for key, label in (("synthetic", "synthetic set"), ("real_subset", "equal-size real subset (leave-one-out)"),
                       ("real_to_real", "real train sample (leave-one-out)")):
        v = n[key]
        emb = v.get("embedding_cosine")
        ssim = v.get("ssim")
        lines.append(f"| {label} | {v['pixel_rms']['min']:.3f} / {v['pixel_rms']['median']:.3f} | "
                     + (f"{ssim['median']:.2f} / {ssim['max']:.2f}" if ssim else "–") + " | "
                     + (f"{emb['min']:.3f} / {emb['median']:.3f}" if emb else "–") + " |")
    lines += ["", "A real subset shared as it is *is* patients' images (distance 0); its row gives each image's "
              "nearest *other* patient as the scale of 'near'.", "", "## Membership inference", ""]
    if "skipped" in m:
        lines.append(f"Not run: {m['skipped']}.")
    else:
        lines += [f"Members: {m['members']}; non-members: {m['nonmembers']}; calibration reference: "
                  f"{m['reference'] or 'none (no val split)'}. 95 % bootstrap intervals.", "",
                  "| target networks | attack | AUC | TPR at 1 % FPR |", "|---|---|---|---|"]
        for key, label in (("synthetic", "trained on the synthetic set"),
                           ("synthetic_own", "trained on the synthetic set, members: its own/initial real images"),
                           ("real_subset", "trained on an equal-size real subset, members: its images"),
                           ("full_data", "trained on the full train split")):
            if key not in m:
                continue
            for a in ("loss", "calibrated"):
                if a in m[key]:
                    res = m[key][a]
                    tpr_key = next(k for k in res if k.startswith("tpr_at_"))
                    lines.append(f"| {label} ({m[key]['n_networks']}) | {a} | {_fmt_ci(res, 'auc', 'auc_ci')} | "
                                 f"{_fmt_ci(res, tpr_key, 'tpr_ci')} |")
    lines += ["", "## What this card does not prove", "",
              "It is evidence, not a guarantee: an attack that fails here may succeed with more reference models "
              "(LiRA), other features or more queries; nearness is measured to the train split only, in two "
              "metrics; no differential-privacy bound is claimed. A near-copy flag or an attack AUC well above "
              "0.5 is a reason not to share the set.", ""]
    return "\n".join(lines)


def write_card(card: Mapping[str, Any], builder: TrustCard, out_dir: str | Path) -> list[Path]:
    """Write ``card.json``, ``card.md`` and ``card_neighbours.png`` into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    atomic_write_json(dict(card), out / CARD_FILES[0])
    with atomic_path(out / CARD_FILES[1]) as tmp:
        tmp.write_text(card_markdown(card))
    builder.draw(out / CARD_FILES[2])
    return [out / f for f in CARD_FILES]
