"""DiffusionPipeline: a bundle of components read from / written to a diffusers folder (`model_index.json`
plus one sub-folder per component), with `to()`, `components`, progress bars and memory toggles.

model_index.json names each component as [library, class name], e.g. ["diffusers", "UNet2DConditionModel"],
["transformers", "CLIPTextModel"], ["stable_diffusion", "StableDiffusionSafetyChecker"]. impasto resolves the
class name alone through `impasto.<class name>`; the library is only written back, for diffusers' sake.
"""
from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..image_processor import numpy_to_pil
from ..loading.hub import resolve_file
from ..models.config import ConfigMixin, read_json
from ..models.modeling import parse_dtype
from .mixins import MemoryMixin

logger = logging.getLogger("impasto")

BUILTIN_MODELS = {"impasto/shapes": Path(__file__).resolve().parents[1] / "data" / "shapes"}

# which library diffusers expects a class to come from, when it is written into model_index.json
_LIBRARY = {
    "CLIPTextModel": "transformers", "CLIPTextModelWithProjection": "transformers", "CLIPTokenizer": "transformers",
    "CLIPTokenizerFast": "transformers", "CLIPImageProcessor": "transformers", "CLIPFeatureExtractor": "transformers",
    "CLIPVisionModelWithProjection": "transformers", "BertTokenizer": "transformers",
    "BertTokenizerFast": "transformers", "StableDiffusionSafetyChecker": "stable_diffusion",
    "LDMBertModel": "latent_diffusion",
}
_MODEL_KWARGS = ("dtype", "variant", "use_safetensors")
_HUB_KWARGS = ("local_files_only", "cache_dir", "revision", "token")
_ACCEPTED_AND_UNUSED = ("low_cpu_mem_usage", "force_download", "proxies", "device_map", "max_memory",
                        "offload_folder", "offload_state_dict", "disable_mmap", "custom_revision")


def library_tuple(module) -> tuple[str, str]:
    """[library, class name] as diffusers records a component in model_index.json."""
    name = type(module).__name__
    root = type(module).__module__.split(".")
    if root[0] == "impasto":
        return _LIBRARY.get(name, "diffusers"), name
    if root[0] == "diffusers" and len(root) > 2 and root[1] == "pipelines":
        return root[2], name
    return root[0], name


def resolve_model_path(path: str | os.PathLike) -> str | os.PathLike:
    """Map built-in short names ("impasto/shapes") to their folder; other paths/ids unchanged."""
    key = str(path)
    if key in BUILTIN_MODELS and not (Path(key) / "model_index.json").is_file():
        folder = BUILTIN_MODELS[key]
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"{key}: the built-in model is not installed (expected a diffusers folder at "
                                    f"{folder}); pass a model folder or hub id instead")
        return folder
    return path


def _accepts(fn, names) -> set[str]:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return set(names)
    return set(names) & set(params)


class DiffusionPipeline(ConfigMixin, MemoryMixin):
    """Base of every impasto pipeline (diffusers' API): components are attributes named as in model_index.json."""

    config_name = "model_index.json"
    model_cpu_offload_seq: str | None = None
    _optional_components: list[str] = []
    _exclude_from_cpu_offload: list[str] = []
    _callback_tensor_inputs: list[str] = []
    _progress_bar_config: dict | None = None

    # ---- components --------------------------------------------------------------------------------
    def register_modules(self, **modules):
        for name, module in modules.items():
            entry = (None, None) if module is None else library_tuple(module)
            self.register_to_config(**{name: list(entry)})
            setattr(self, name, module)

    def _module_names(self) -> list[str]:
        return [k for k, v in self.config.items()
                if not k.startswith("_") and isinstance(v, (list, tuple)) and len(v) == 2]

    @property
    def components(self) -> dict[str, Any]:
        """The constructor's component arguments, so `OtherPipeline(**pipe.components)` works."""
        params = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k, None) for k in self._module_names() if k in params}

    def _torch_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return [(k, getattr(self, k)) for k in self._module_names() if isinstance(getattr(self, k, None), torch.nn.Module)]

    @property
    def device(self) -> torch.device:
        for _, m in self._torch_modules():
            for p in m.parameters():
                return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for _, m in self._torch_modules():
            for p in m.parameters():
                if p.is_floating_point():
                    return p.dtype
        return torch.float32

    @property
    def _execution_device(self) -> torch.device:
        return getattr(self, "_offload_device", None) or self.device

    @property
    def name_or_path(self) -> str | None:
        """The folder or hub id the pipeline was loaded from (None when built from components)."""
        return self.config.get("_name_or_path")

    def to(self, *args, **kwargs) -> "DiffusionPipeline":
        """`to(device)`, `to(dtype)`, `to(device, dtype)` or keywords device= / dtype= (torch_dtype=);
        diffusers' `silence_dtype_warnings` is accepted (impasto warns about no dtype there)."""
        kwargs.pop("silence_dtype_warnings", None)
        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
        if kwargs:
            raise ValueError(f"to(): unexpected arguments {sorted(kwargs)}")
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            elif isinstance(a, (str, torch.device)):
                device = a
            else:
                raise ValueError(f"to(): expected a device or a dtype, got {a!r}")
        dtype = parse_dtype(dtype)
        for _, m in self._torch_modules():
            m.to(device=device, dtype=dtype)
        return self

    # ---- progress -----------------------------------------------------------------------------------
    def set_progress_bar_config(self, **kwargs):
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable=None, total=None):
        from tqdm.auto import tqdm

        cfg = dict(self._progress_bar_config or {})
        if iterable is not None:
            return tqdm(iterable, **cfg)
        if total is not None:
            return tqdm(total=total, **cfg)
        raise ValueError("progress_bar: give either iterable or total")

    numpy_to_pil = staticmethod(numpy_to_pil)

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load every component listed in model_index.json (folder or hub id).

        Components passed by keyword replace the folder's (None disables one); `dtype`/`torch_dtype` is a dtype
        or a dict {component: dtype, "default": dtype}; `variant`, `use_safetensors`, `local_files_only`,
        `cache_dir`, `revision`, `token` are passed on to each component; other keywords that the pipeline's
        constructor takes (e.g. `requires_safety_checker`) override model_index.json values.
        """
        path = resolve_model_path(pretrained_model_name_or_path)
        dtype = kwargs.pop("dtype", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        dtype = dtype if dtype is not None else torch_dtype
        hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        model_kw = {k: kwargs.pop(k) for k in ("variant", "use_safetensors") if k in kwargs}
        device = kwargs.pop("device", None)
        for k in _ACCEPTED_AND_UNUSED:
            if kwargs.pop(k, None) is not None:
                logger.info("from_pretrained: %s has no effect in impasto", k)
        index = read_json(resolve_file(path, cls.config_name, **hub))
        pipe_cls = cls._pipeline_class(index, path)
        params = inspect.signature(pipe_cls.__init__).parameters
        entries = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2}
        components, config_args = {}, {}
        for name, (library, class_name) in entries.items():
            if name not in params:
                logger.warning("%s: component %r is not used by %s; skipped", path, name, pipe_cls.__name__)
                continue
            if name in kwargs:
                components[name] = kwargs.pop(name)
            elif class_name is None:
                components[name] = None
            else:
                comp_dtype = _component_dtype(dtype, name)
                components[name] = _load_component(path, name, library, class_name, comp_dtype, model_kw, hub)
                model = components[name]
                if isinstance(model, ConfigMixin) and isinstance(model, torch.nn.Module):  # as diffusers: models
                    model.register_to_config(_name_or_path=str(Path(path) / name))  # name their own folder
        for name, p in params.items():
            if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or name in components:
                continue
            if name in kwargs:
                value = kwargs.pop(name)
            elif name in index:
                value = index[name]
            elif p.default is not p.empty:
                continue
            else:
                raise ValueError(f"{path}: model_index.json has no component {name!r}, which "
                                 f"{pipe_cls.__name__} needs; pass {name}=... to from_pretrained")
            config_args[name] = value
        if kwargs:
            logger.warning("from_pretrained: %s not used by %s", ", ".join(sorted(kwargs)), pipe_cls.__name__)
        pipe = pipe_cls(**components, **config_args)
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        for _, m in pipe._torch_modules():
            m.eval()
        if device is not None:
            pipe.to(device)
        return pipe

    @classmethod
    def from_pipe(cls, pipeline: "DiffusionPipeline", **kwargs) -> "DiffusionPipeline":
        """This pipeline class over another pipeline's components: the same objects, no weights copied.

        `StableDiffusionImg2ImgPipeline.from_pipe(txt2img)` takes the components this class's constructor names
        from `pipeline`; components it lacks default to None where optional. Keywords replace components or
        options (`requires_safety_checker=False`); options not given keep `pipeline`'s config values. Config that
        this class does not take is kept as private `_key` entries (and restored by a later `from_pipe`).
        Modules keep their dtype and device unless `torch_dtype`/`dtype` is given, which casts the shared modules
        in place (so `pipeline` changes too). State living on the modules (attention backends, LoRA, VAE slicing,
        CPU offload hooks) is shared; after swapping a component in an offloaded pipeline, enable offload again.
        """
        if not isinstance(pipeline, DiffusionPipeline):
            got = f"the class {pipeline.__name__} (pass an instance)" if isinstance(pipeline, type) else \
                type(pipeline).__name__
            if type(pipeline).__module__.split(".")[0] == "diffusers":
                got += " from diffusers; load the model with impasto's from_pretrained instead"
            raise TypeError(f"pipeline: expected a DiffusionPipeline, got {got}")
        pipe_cls = type(pipeline) if cls is DiffusionPipeline else cls
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        if dtype is not None and torch_dtype is not None:
            raise ValueError("dtype, torch_dtype: give at most one of them (torch_dtype is the older name)")
        dtype = parse_dtype(torch_dtype if dtype is None else dtype, "torch_dtype" if dtype is None else "dtype")
        if kwargs.pop("custom_pipeline", None) is not None:
            raise ValueError("custom_pipeline: impasto runs no downloaded pipeline code; call from_pipe on an "
                             "impasto pipeline class")
        for k in ("custom_revision", "trust_remote_code"):
            kwargs.pop(k, None)

        params = {k: p for k, p in inspect.signature(pipe_cls.__init__).parameters.items()
                  if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        modules = [k for k, p in params.items() if p.default is p.empty or k in pipe_cls._optional_components]
        options = [k for k in params if k not in modules]
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"from_pipe: {', '.join(unknown)} is neither a component nor an option of "
                            f"{pipe_cls.__name__} (components: {', '.join(modules)}; options: {', '.join(options)})")
        config = dict(pipeline.config)
        source = pipeline.components
        args = {k: source[k] for k in modules if k in source}
        for k in options:  # options this class takes: from the config, or from a private key an earlier from_pipe kept
            if k in config or f"_{k}" in config:
                args[k] = config.get(k, config.get(f"_{k}"))
        args.update(kwargs)
        missing = [k for k in modules if k not in args and params[k].default is params[k].empty]
        if missing:
            raise ValueError(f"from_pipe: {pipe_cls.__name__} needs {', '.join(missing)}, which "
                             f"{type(pipeline).__name__} does not have; pass them as keywords, e.g. "
                             f"from_pipe(pipe, {missing[0]}=...)")
        new = pipe_cls(**args)
        kept = {k if k.startswith("_") else f"_{k}": v for k, v in config.items() if k.lstrip("_") not in new.config}
        new.register_to_config(**kept)
        for attr in ("_offload_device", "_offload_hooks", "_offload_resident"):
            if attr in vars(pipeline):  # offload hooks sit on the shared modules, so their state comes along
                setattr(new, attr, getattr(pipeline, attr))
        if dtype is not None:
            new.to(dtype=dtype)
        return new

    @classmethod
    def _pipeline_class(cls, index: dict, path) -> type:
        if cls is not DiffusionPipeline:
            return cls
        name = index.get("_class_name")
        import impasto

        try:
            found = getattr(impasto, str(name))
        except (AttributeError, ImportError):
            found = None
        if not (isinstance(found, type) and issubclass(found, DiffusionPipeline)):
            raise ValueError(f"{path}: model_index.json names the pipeline {name!r}, which impasto does not provide")
        return found

    # ---- saving -------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant: str | None = None,
                        max_shard_size=None, push_to_hub: bool = False, **kwargs):
        """Write model_index.json and one folder per component (readable by diffusers and by impasto)."""
        if push_to_hub:
            raise ValueError("push_to_hub: impasto does not upload; save locally and use huggingface_hub")
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"save_directory: {save_directory} is a file, expected a folder")
        save_directory.mkdir(parents=True, exist_ok=True)
        for name in self._module_names():
            module = getattr(self, name, None)
            if module is None:
                continue
            self.register_to_config(**{name: list(library_tuple(module))})
            save = module.save_pretrained
            args = dict(safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size)
            args = {k: v for k, v in args.items() if k in _accepts(save, args) and v is not None}
            save(str(save_directory / name), **args)
        self.save_config(save_directory)


def _component_dtype(dtype, name: str):
    if isinstance(dtype, dict):
        return parse_dtype(dtype.get(name, dtype.get("default")), f"dtype[{name!r}]")
    return parse_dtype(dtype)


def _load_component(path, name: str, library, class_name: str, dtype, model_kw: dict, hub: dict):
    import impasto

    try:
        cls = getattr(impasto, class_name)
    except (AttributeError, ImportError):
        raise ValueError(f"{path}: model_index.json names {name} = [{library!r}, {class_name!r}], a class impasto "
                         f"does not provide; pass {name}=<object> (or {name}=None if optional) to from_pretrained") \
            from None
    loader = getattr(cls, "from_pretrained", None)
    if loader is None:
        raise ValueError(f"{path}: {class_name} (component {name}) cannot be loaded from a folder")
    args = dict(hub)
    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        args.update(model_kw)
        if dtype is not None:
            args["dtype"] = dtype
    args = {k: v for k, v in args.items() if k in _accepts(loader, args)}
    try:
        return loader(path, subfolder=name, **args)
    except FileNotFoundError:
        if not args.get("variant"):
            raise
    # as diffusers: hub repos often hold a variant for some components only; the others load their regular files
    logger.warning("%s: %s has no %r variant weights; loading its regular weights", path, name, args["variant"])
    return loader(path, subfolder=name, **{k: v for k, v in args.items() if k != "variant"})
