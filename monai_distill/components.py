"""Components a bundle config can replace: the networks (and the evaluation optimiser) as ``_target_`` entries.

A bundle's ``train.json`` has entries such as ``network_def``, each a MONAI definition with a ``_target_``. The
default builds the registry network that the flat flag names (:class:`RegistryNetwork`, with the preset's width,
depth and norm, exactly as before these entries existed)::

    "network_def": {"_target_": "$monai_distill.components.RegistryNetwork(@arch)", "_mode_": "callable"}

so ``--arch resnet18`` keeps working, and ``--network_def#_target_ monai.networks.nets.DenseNet`` (plus its own
arguments, ``--network_def#block_config "(2, 2)"``) or a whole ``--network_def "{'_target_': ..., ...}"`` replaces
it. With ``"_mode_": "callable"`` MONAI's ``ConfigParser`` hands the workflow a factory (a class, or a
``functools.partial`` with the definition's arguments), which is called for every fresh network. The arguments
that depend on the data and that the definition leaves unset are filled in by name (:data:`NETWORK_ARGUMENTS`:
``spatial_dims``, ``in_channels``, ``out_channels``/``num_classes``, ``spatial_size``/``img_size``, ...), so one
definition serves 2D and 3D data of any channel and class count; a value the definition sets itself is never
replaced, and nothing is passed through ``**kwargs``. A dotted path (``"mymodule.MyNet"``) is accepted as a
shorthand for a definition without arguments.

A network definition is routed to every place that builds networks through
:func:`~monai_distill.networks.get_network` by registering it, for the duration of a run, under a label such as
``classifier@1f2e3d4c`` (:func:`registered_networks`): methods, expert buffers and the evaluation protocol need no
copy of their network code. :func:`check_network` builds it once for the data and runs one forward pass, so that a
network that cannot take the images, or does not give one logit per class, fails before any time is spent.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from .checks import OptionError
from .evaluation import protocol_optimizer
from .networks import NETWORKS, get_network

__all__ = [
    "NETWORK_ARGUMENTS",
    "FlagDataset",
    "ProtocolSGD",
    "RegisteredMethod",
    "RegistryNetwork",
    "SetWriter",
    "as_factory",
    "build_component",
    "check_network",
    "check_optimizer",
    "component_label",
    "component_spec",
    "component_target",
    "factory_from_spec",
    "method_class",
    "network_arguments",
    "registered_networks",
    "registry_parts",
]

# Parameter names a network factory may take for a data-dependent value (MONAI's spellings and the package's own).
NETWORK_ARGUMENTS: dict[str, str] = {
    "spatial_dims": "spatial_dims",
    "in_channels": "in_channels",
    "n_input_channels": "in_channels",  # MONAI ResNet
    "num_classes": "num_classes",
    "out_channels": "num_classes",  # MONAI DenseNet, EfficientNet, ...
    "classes": "num_classes",  # MONAI Classifier
    "spatial_size": "spatial_size",
    "img_size": "spatial_size",  # MONAI ViT
    "in_shape": "in_shape",  # MONAI Classifier: (channels, *spatial_size)
}


class RegistryNetwork:
    """The default of ``network_def``/``eval_network_def``: the registry network ``name`` (the flat flag ``--arch``
    or ``--eval_arch``), built by :func:`~monai_distill.networks.get_network`.

    The workflows read it as "the registry network ``name``" and build it with the preset's width, depth and norm,
    as before; ``name=None`` (``--eval_arch null``) means the workflow's default network. Called directly it is a
    factory like any other (registry defaults for width, depth and norm).

    Args:
        name: a registered network name, or ``None``.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = None if name is None or str(name).strip().lower() in ("", "none", "null") else str(name).lower()

    def __call__(self, spatial_dims: int, in_channels: int, num_classes: int, spatial_size: Sequence[int],
                 **kwargs: Any) -> nn.Module:
        if self.name is None:
            raise ValueError("RegistryNetwork(None) names no network; give a registered name.")
        return get_network(self.name, spatial_dims, in_channels, num_classes, spatial_size, **kwargs)

    def __repr__(self) -> str:
        return f"RegistryNetwork({self.name!r})"


class FlagDataset:
    """The default of ``dataset_def``: the data that the flat flag ``--dataset`` names (a MedMNIST flag, or a user
    ``.npz``/``.csv``), read by :func:`~monai_distill.data.load_dataset` (the workflows read it as "no replacement").

    A replacement is any callable that takes ``split`` (``train``/``val``/``test``) and returns a
    :class:`~monai_distill.data.RealDataset` (images normalised, labels as class indices), or a class whose
    constructor takes no ``split`` and whose instances are such callables; ``dataset_dir`` and ``size`` are passed
    to either when it accepts them and leaves them unset. Transforms belong inside it (e.g. a MONAI
    ``Compose`` applied to each image as it loads).

    Args:
        name: the ``--dataset`` value, or ``None``.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = None if name is None or str(name).strip().lower() in ("", "none", "null") else str(name)

    def __call__(self, split: str, dataset_dir: str = ".", size: int = 28) -> Any:
        from .data import load_dataset

        if self.name is None:
            raise ValueError("FlagDataset(None) names no dataset; give a MedMNIST flag or a .npz/.csv path.")
        return load_dataset(self.name, split=split, dataset_dir=dataset_dir, size=size)

    def __repr__(self) -> str:
        return f"FlagDataset({self.name!r})"


class RegisteredMethod:
    """The default of ``method_def``: the registered method that the flat flag ``--method`` names (the workflows read
    it as "no replacement").

    A replacement is a subclass of :class:`~monai_distill.methods.Distiller` (``init_synthetic``, ``step``,
    ``synthetic_set``, ``num_iterations``; usually a registered method's class with one thing changed), or a
    definition of one with arguments: its arguments are method options, as ``--method_options`` gives them
    (``--method_options`` wins on a key both set). Its ``name`` labels the run and picks ``configs/<dataset>.json``
    settings, so a subclass that keeps its parent's name keeps its parent's tuned settings.

    Args:
        name: the ``--method`` value, or ``None``.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = None if name is None or str(name).strip().lower() in ("", "none", "null") else str(name).lower()

    def __call__(self) -> type:
        """The registered class (unknown names list the valid ones)."""
        from .methods import get_method

        if self.name is None:
            raise ValueError("RegisteredMethod(None) names no method; give a registered name.")
        return get_method(self.name)

    def __repr__(self) -> str:
        return f"RegisteredMethod({self.name!r})"


def method_class(factory: Callable[..., Any], entry: str = "method_def") -> tuple[type, dict[str, Any]]:
    """The :class:`~monai_distill.methods.Distiller` subclass of a ``method_def`` and the options it binds.

    Raises:
        OptionError: the definition is not a Distiller subclass (or a partial of one without positional arguments).
    """
    from .methods import Distiller

    func = factory.func if isinstance(factory, functools.partial) else factory
    if not (inspect.isclass(func) and issubclass(func, Distiller)) or (
            isinstance(factory, functools.partial) and factory.args):
        raise OptionError(f"{_short(entry)} {component_target(factory)}: expected a subclass of "
                          "monai_distill.methods.Distiller (its keyword arguments become method options).")
    return func, dict(factory.keywords) if isinstance(factory, functools.partial) else {}


class SetWriter:
    """The default of ``writer_def``: writes a finished set as ``synthetic.pt`` (:meth:`SyntheticSet.save`) and
    ``synthetic.png`` (:meth:`SyntheticSet.to_png`) into the output directory.

    A replacement is called as ``writer(syn, output_dir)`` once the set is final (on the main process) and must
    write ``synthetic.pt``, which ``evaluate.json``, ``card.json`` and resuming read; subclass this one and call
    ``super().__call__`` to add outputs (NIfTI volumes, a DICOM series, an upload).
    """

    def __call__(self, syn: Any, output_dir: Any) -> list[Any]:
        from pathlib import Path

        out = Path(output_dir)
        return [syn.save(out / "synthetic.pt"), syn.to_png(out / "synthetic.png")]

    def __repr__(self) -> str:
        return "SetWriter()"


class ProtocolSGD:
    """The default of ``eval_optimizer_def``: the evaluation protocol's SGD, with the preset's momentum and weight
    decay (the workflows read it as "no replacement"). Called directly: SGD with the given settings.
    """

    def __call__(self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4
                 ) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def __repr__(self) -> str:
        return "ProtocolSGD()"


def _short(entry: str) -> str:
    return entry if entry.startswith("--") else f"--{entry}"


def component_target(factory: Callable[..., Any]) -> str:
    """``module.QualName`` of what ``factory`` builds (the ``_target_`` a config would name)."""
    func = factory.func if isinstance(factory, functools.partial) else factory
    module = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    return f"{module}.{name}" if module else str(name)


def component_spec(factory: Callable[..., Any]) -> dict[str, Any]:
    """The definition as JSON: ``{"_target_": ..., **bound keyword arguments}`` (non-JSON values as text).

    Recorded in metrics and checkpoints, so that a result says which component made it, and
    :func:`factory_from_spec` can build it again.
    """
    keywords = dict(factory.keywords) if isinstance(factory, functools.partial) else {}
    if isinstance(factory, functools.partial) and factory.args:
        keywords["_args_"] = list(factory.args)
    func = factory.func if isinstance(factory, functools.partial) else factory
    if not (inspect.isclass(func) or inspect.isroutine(func)):  # a callable object: its state is part of it
        keywords["_instance_"] = repr(func)
    return json.loads(json.dumps({"_target_": component_target(factory), **keywords}, sort_keys=True, default=str))


def registry_parts(factory: Any, kind: type) -> tuple[str | None, dict[str, Any]] | None:
    """``(name, options)`` when ``factory`` is a registry default (``kind``, e.g. :class:`RegistryNetwork`) or a
    partial of one with options (``--encoder_def#width 32``); ``None`` for any other definition."""
    if isinstance(factory, kind):
        return factory.name, {}
    if isinstance(factory, functools.partial) and isinstance(factory.func, kind) and not factory.args:
        return factory.func.name, dict(factory.keywords)
    return None


def component_label(factory: Callable[..., Any]) -> str:
    """A short name for a defined network, e.g. ``classifier@1f2e3d4c``: the class name and a digest of the
    definition. It stands where a registry name would (metrics, buffer and model-pool directories, checkpoints), and
    the ``@`` keeps it apart from every registry name."""
    spec = component_spec(factory)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return f"{spec['_target_'].rsplit('.', 1)[-1].lower()}@{digest}"


def factory_from_spec(spec: Mapping[str, Any], entry: str) -> Callable[..., Any]:
    """A factory from a definition dict (``{"_target_": ..., **arguments}``), built by MONAI's ``ConfigParser``
    in callable mode, as a bundle config would.

    Raises:
        OptionError: the target cannot be imported, or the dict is no definition.
    """
    from monai.bundle import ConfigParser

    if "_target_" not in spec:
        raise OptionError(f"{_short(entry)}: a definition needs a '_target_' (the class or function to build), got "
                          f"the keys {sorted(spec)}.")
    if "_instance_" in spec:
        raise OptionError(f"{_short(entry)}: '{spec['_target_']}' was a callable object ({spec['_instance_']}), which "
                          "cannot be built again from its record; give the definition of a class or function.")
    config = {k: v for k, v in spec.items() if k != "_args_"}
    config["_mode_"] = "callable"
    try:
        factory = ConfigParser({"component": config}).get_parsed_content("component")
    except Exception as e:
        raise OptionError(f"{_short(entry)}: cannot build '{spec['_target_']}' ({' '.join(str(e).split())}); is its "
                          "module importable from the current directory or PYTHONPATH?") from None
    args = spec.get("_args_") or []
    return functools.partial(factory, *args) if args else factory


def as_factory(value: Any, entry: str) -> Callable[..., Any] | None:
    """A config entry as a factory: ``None`` stays ``None`` (the registry default).

    Accepts what MONAI's ``ConfigParser`` gives for ``"_mode_": "callable"`` (a ``functools.partial``, a class or a
    function), a definition dict (Python callers), or a dotted path such as ``"mymodule.MyNet"``.

    Raises:
        OptionError: a built object instead of a factory (``"_mode_": "callable"`` missing), an import path that
            cannot be imported, or another type.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    if isinstance(value, Mapping):
        return factory_from_spec(value, entry)
    if isinstance(value, str):
        from pydoc import locate

        target = value.strip()
        try:
            found = locate(target)
        except Exception as e:  # pydoc raises ErrorDuringImport when the module exists but fails to import
            raise OptionError(f"{_short(entry)}: importing '{target}' failed ({' '.join(str(e).split())}).") from None
        if found is None or not callable(found):
            raise OptionError(f"{_short(entry)}: cannot import '{target}'; give 'module.Class' of a module importable "
                              "from the current directory or PYTHONPATH, or a definition "
                              "{'_target_': ..., '_mode_': 'callable', ...}.")
        return found
    if isinstance(value, (nn.Module, torch.optim.Optimizer)):
        raise OptionError(f"{_short(entry)}: got a built {type(value).__name__}, but a fresh one is needed for each "
                          "use; add \"_mode_\": \"callable\" to the definition so that MONAI gives a factory.")
    if callable(value):
        return value
    raise OptionError(f"{_short(entry)} must be null, a definition {{'_target_': ..., '_mode_': 'callable', ...}} or "
                      f"'module.Class'; got {type(value).__name__} {value!r}.")


def _free_parameters(factory: Callable[..., Any]) -> set[str]:
    """Names ``factory`` accepts by keyword and its definition has not set (``**kwargs`` is not a name)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some C extensions have no signature: fill nothing
        return set()
    bound = set(factory.keywords) if isinstance(factory, functools.partial) else set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n for n, p in sig.parameters.items() if p.kind in kinds and n not in bound}


def build_component(factory: Callable[..., Any], entry: str, values: Mapping[str, Any], what: str = "") -> Any:
    """``factory(**filled)``: the ``values`` whose names it accepts and has not set itself.

    Args:
        factory: the definition.
        entry: its config entry, for messages.
        values: parameter name -> value it gets when the definition leaves it unset.
        what: what the values describe, for messages (e.g. ``"1-channel 28 x 28 images, 2 classes"``).

    Raises:
        OptionError: building failed (wrong or missing arguments); the message names the entry and the arguments.
    """
    free = _free_parameters(factory)
    filled = {k: v for k, v in values.items() if k in free}
    try:
        return factory(**filled)
    except Exception as e:
        given = ", ".join(f"{k}={v!r}" for k, v in filled.items()) or "none"
        where = f" for {what}" if what else ""
        raise OptionError(f"{_short(entry)} {component_target(factory)}: cannot be built{where} (arguments filled in "
                          f"from the data: {given}): {type(e).__name__}: {' '.join(str(e).split())}") from None


def network_arguments(spatial_dims: int, in_channels: int, num_classes: int,
                      spatial_size: Sequence[int]) -> dict[str, Any]:
    """The values of :data:`NETWORK_ARGUMENTS` for data of this shape and class count."""
    size = tuple(int(s) for s in spatial_size)
    by_kind = {"spatial_dims": int(spatial_dims), "in_channels": int(in_channels), "num_classes": int(num_classes),
               "spatial_size": size, "in_shape": (int(in_channels), *size)}
    return {name: by_kind[kind] for name, kind in NETWORK_ARGUMENTS.items()}


def _describe_data(in_channels: int, num_classes: int, spatial_size: Sequence[int]) -> str:
    return f"{in_channels}-channel {' x '.join(str(s) for s in spatial_size)} images, {num_classes} classes"


def _network_builder(factory: Callable[..., Any], entry: str) -> Callable[..., nn.Module]:
    """A registry builder (``get_network``'s calling convention) for a defined network. The registry's shared
    options (width, depth, norm of the preset) are ignored: the definition sets its own sizes."""

    def builder(spatial_dims: int, in_channels: int, num_classes: int, spatial_size: Sequence[int],
                **_shared: Any) -> nn.Module:
        values = network_arguments(spatial_dims, in_channels, num_classes, spatial_size)
        return build_component(factory, entry, values, _describe_data(in_channels, num_classes, spatial_size))

    builder.__doc__ = f"{component_target(factory)} of {entry} (the preset's width/depth/norm do not apply)."
    return builder


@contextmanager
def registered_networks(definitions: Mapping[str, tuple[Callable[..., Any], str]]) -> Iterator[None]:
    """Register each defined network under its label for the block, so that
    :func:`~monai_distill.networks.get_network` (methods, buffers, evaluation) builds it like a registry network.

    Args:
        definitions: label -> (factory, config entry).
    """
    with ExitStack() as stack:
        for label, (factory, entry) in definitions.items():
            stack.enter_context(NETWORKS.registered(label, _network_builder(factory, entry)))
        yield


def check_network(factory: Callable[..., Any], entry: str, spatial_dims: int, in_channels: int, num_classes: int,
                  spatial_size: Sequence[int], embed_for: str | None = None) -> None:
    """Build the defined network for the data and run one forward pass on two blank images, without touching the
    global random state.

    Args:
        factory: the definition.
        entry: its config entry, for messages.
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: classes of the data.
        spatial_size: image size without the channel axis.
        embed_for: the method that also needs ``embed(x)`` and ``classifier`` (features for herding, DM, PTM's
            overlap term), or ``None`` when ``forward`` is enough.

    Raises:
        OptionError: the network cannot be built, is not an ``nn.Module``, fails on the images, does not return
            (N, num_classes) logits, or lacks ``embed`` where ``embed_for`` needs it.
    """
    name = f"{_short(entry)} {component_target(factory)}"
    size = tuple(int(s) for s in spatial_size)
    expected = (f"expected spatial_dims={spatial_dims}, in_channels={in_channels} and one logit per class "
                f"(out_channels/num_classes={num_classes}) for {_describe_data(in_channels, num_classes, size)}")
    with torch.random.fork_rng(devices=[]):
        net = build_component(factory, entry, network_arguments(spatial_dims, in_channels, num_classes, size),
                              _describe_data(in_channels, num_classes, size))
        if not isinstance(net, nn.Module):
            raise OptionError(f"{name}: built a {type(net).__name__}, not a torch.nn.Module.")
        x = torch.zeros(2, in_channels, *size)
        net.eval()
        try:
            with torch.no_grad():
                out = net(x)
        except Exception as e:
            raise OptionError(f"{name}: a forward pass on images of shape {tuple(x.shape)} failed "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); {expected}.") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        found = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise OptionError(f"{name}: returned {found} for a batch of 2 images; {expected}, i.e. output (2, "
                          f"{num_classes}).")
    if embed_for and not (callable(getattr(net, "embed", None)) and isinstance(getattr(net, "classifier", None),
                                                                                nn.Module)):
        raise OptionError(f"--method {embed_for} uses the network's embed(x) (penultimate features) and classifier, "
                          f"which the network of {name} does not have; give a class with embed() and forward(x) == "
                          "classifier(embed(x)) (monai_distill.networks.DistillNet), or a method that needs only "
                          "forward() (random, forgetting, dc, dsa, mtt, ftd, datm, hoptm, ptm without overlap).")


def check_optimizer(factory: Callable[..., Any], entry: str) -> None:
    """Build the optimiser definition once on a tiny parameter, as the evaluation protocol will (``lr`` filled in
    unless the definition sets it).

    Raises:
        OptionError: it cannot be built, or does not build a ``torch.optim.Optimizer``.
    """
    try:
        opt = protocol_optimizer(factory, 0.01, nn.Linear(1, 1))
    except Exception as e:
        raise OptionError(f"{_short(entry)} {component_target(factory)}: cannot build an optimiser from it "
                          f"({type(e).__name__}: {' '.join(str(e).split())}); expected a torch.optim class with "
                          "its arguments except params.") from None
    if not isinstance(opt, torch.optim.Optimizer):
        raise OptionError(f"{_short(entry)} {component_target(factory)}: built a {type(opt).__name__}, not a "
                          "torch.optim.Optimizer.")
