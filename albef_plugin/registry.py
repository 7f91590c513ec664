"""Component registries: one per kind, with an MMF-style facade.

Each kind of component (model, dataset builder, metric, ...) has its own
:class:`Registry`, built on ``fvcore.common.registry.Registry`` and extended with
string names, aliases, explicit overriding and "did you mean" errors.

Usage::

    from albef_plugin.registry import registry

    @registry.register_model("albef_pretrain", aliases=("albef",))
    class ALBEFPretrain(BaseModel): ...

    model_cls = registry.get_model_class("albef_pretrain")

A name registered twice raises :class:`DuplicateNameError` unless the second
registration passes ``override=True`` (a plugin replacing a built-in on
purpose). An unknown name raises :class:`UnknownNameError`, a ``KeyError`` whose
message lists the closest known names.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from fvcore.common.registry import Registry as _FvcoreRegistry

from albef_plugin.errors import UserError

__all__ = [
    "Registry",
    "DuplicateNameError",
    "UnknownNameError",
    "registry",
    "REGISTRIES",
]


class DuplicateNameError(ValueError):
    """A name (or alias) is already taken in a registry."""


class UnknownNameError(UserError, KeyError):
    """A name is not in a registry; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would repr() the message and quote it
        return str(self.args[0]) if self.args else ""


_builtins = {"imported": False}


def _import_builtins_once() -> bool:
    """Import albef_plugin's own components (their modules register them) on the first
    lookup, so ``registry.get_model_class("albef_pretrain")`` works in a fresh interpreter
    without knowing which module to import. Returns whether it imported now."""
    if _builtins["imported"]:
        return False
    _builtins["imported"] = True  # first: the imported modules may look names up themselves
    from albef_plugin.plugins import import_builtin_components

    import_builtin_components()
    return True


def closest_names(name: str, candidates: Iterable[str], n: int = 3) -> List[str]:
    """The candidates most similar to ``name``, best first (may be empty)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


class Registry(_FvcoreRegistry):
    """A name -> object map for one component kind.

    Differences from fvcore's registry: objects are registered under an explicit
    string name (default: the class name) plus optional aliases; duplicates raise
    a real exception (not an ``assert``) unless ``override=True``; lookups of an
    unknown name list the closest known names.
    """

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind
        # alias -> canonical name; canonical names live in fvcore's _obj_map
        self._aliases: Dict[str, str] = {}

    # ----------------------------------------------------------- registration
    def register(  # type: ignore[override]
        self,
        obj: Any = None,
        *,
        name: Optional[str] = None,
        aliases: Tuple[str, ...] = (),
        override: bool = False,
    ) -> Any:
        """Register ``obj`` directly, or return a decorator when ``obj`` is None.

        ``register(obj=MyClass)`` and ``@register(name="x")`` both work; a plain
        string as first argument is taken as the name (``@register("x")``).
        """
        if isinstance(obj, str):
            name, obj = obj, None

        def _register(target: Any) -> Any:
            self._add(name or target.__name__, target, tuple(aliases), override)
            return target

        return _register if obj is None else _register(obj)

    def _add(self, name: str, obj: Any, aliases: Tuple[str, ...], override: bool) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} registry: names must be non-empty strings, got {name!r}")
        for key in (name, *aliases):
            taken_by = self._owner_of(key)
            if taken_by is not None and not override:
                raise DuplicateNameError(
                    f"{self.kind} registry: {key!r} is already registered to {taken_by!r}. "
                    f"Pick another name, or pass override=True to replace it on purpose."
                )
        if override:
            self._drop(name)
            for alias in aliases:
                self._drop(alias)
        self._obj_map[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def _owner_of(self, key: str) -> Optional[Any]:
        if key in self._obj_map:
            return self._obj_map[key]
        if key in self._aliases:
            return self._obj_map.get(self._aliases[key])
        return None

    def _drop(self, key: str) -> None:
        if key in self._aliases:
            del self._aliases[key]
        elif key in self._obj_map:
            del self._obj_map[key]
            for alias in [a for a, target in self._aliases.items() if target == key]:
                del self._aliases[alias]

    # ----------------------------------------------------------------- lookup
    def canonical_name(self, name: str) -> str:
        """The registered name behind ``name`` (itself or the name it aliases)."""
        for attempt in range(2):
            if name in self._obj_map:
                return name
            if name in self._aliases:
                return self._aliases[name]
            if attempt == 0 and not _import_builtins_once():
                break  # nothing new was imported: no point in looking again
        raise self._unknown(name)

    def get(self, name: str) -> Any:  # type: ignore[override]
        return self._obj_map[self.canonical_name(name)]

    def _unknown(self, name: Any) -> UnknownNameError:
        known = self.names(include_aliases=True)
        close = closest_names(str(name), known)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(sorted(known)) or "(none registered)"
        return UnknownNameError(
            f"No {self.kind} named {name!r}.{hint} Known {self.kind} names: {listing}. "
            f"(Your own components are found through env.user_dir=<module or .py file>, or an "
            f"installed package's 'albef_plugin.plugins' entry point.)"
        )

    def names(self, include_aliases: bool = False) -> List[str]:
        _import_builtins_once()
        names = list(self._obj_map)
        return names + list(self._aliases) if include_aliases else names

    def __contains__(self, name: object) -> bool:
        if name not in self._obj_map and name not in self._aliases:
            _import_builtins_once()
        return name in self._obj_map or name in self._aliases

    def __iter__(self) -> Iterator[Tuple[str, Any]]:
        return iter(self._obj_map.items())


# One registry per component kind that a config can select by name. (Encoders and losses are
# not registries: models build them from their typed config; see models/albef/base.py.)
MODELS = Registry("model")
PROCESSORS = Registry("processor")
DATASET_BUILDERS = Registry("dataset builder")
TRAINERS = Registry("trainer")
OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("scheduler")
METRICS = Registry("metric")
LAUNCHERS = Registry("launcher")

# facade suffix -> registry; gives register_<suffix> and get_<suffix>_class
REGISTRIES: Dict[str, Registry] = {
    "model": MODELS,
    "processor": PROCESSORS,
    "builder": DATASET_BUILDERS,
    "trainer": TRAINERS,
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
    "metric": METRICS,
    "launcher": LAUNCHERS,
}


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


class _RegistryFacade:
    """MMF-style access: ``registry.register_model(name)``, ``registry.get_model_class(name)``.

    There is deliberately no global key-value ``state`` bag: components receive
    their configuration through their constructors.
    """

    def __getattr__(self, attr: str) -> Callable[..., Any]:
        if attr.startswith("register_") and attr[len("register_"):] in REGISTRIES:
            reg = REGISTRIES[attr[len("register_"):]]

            def register(name: Optional[str] = None, *, aliases: Tuple[str, ...] = (),
                         override: bool = False) -> Callable[[Any], Any]:
                return reg.register(name=name, aliases=tuple(aliases), override=override)

            return register
        if attr.startswith("get_") and attr.endswith("_class"):
            kind = attr[len("get_"):-len("_class")]
            if kind in REGISTRIES:
                return REGISTRIES[kind].get
        if attr.startswith("list_"):
            for kind, reg_ in REGISTRIES.items():
                if attr == f"list_{_plural(kind)}":
                    return lambda: sorted(reg_.names())
        raise AttributeError(
            f"registry has no attribute {attr!r}; kinds are: {', '.join(REGISTRIES)} "
            f"(use register_<kind>, get_<kind>_class, list_<kinds>)"
        )

    def __dir__(self) -> List[str]:
        return [name for kind in REGISTRIES for name in
                (f"register_{kind}", f"get_{kind}_class", f"list_{_plural(kind)}")]


registry = _RegistryFacade()
