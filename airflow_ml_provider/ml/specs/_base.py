"""The base of the step spec types and the reader their ``parse`` uses (standard library only)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+

# Keys the operators add to specs, besides the step's own (where the step declares one of them,
# its type checks it; elsewhere it is accepted and ignored, also by the strict types).
VOLATILE_KEYS = frozenset(
    {"output_dir", "tracking_uri", "mlflow", "title", "context", "dataset_version", "baseline"}
)
DATA_FORMATS = ("csv", "parquet")
_DERIVED = "airflow_ml.derived"


def derived() -> Any:
    """A field computed by ``parse`` from the spec's keys, not a key of its own."""
    return dataclasses.field(metadata={_DERIVED: True})


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepSpec:
    """
    A step's spec as a type: the keys of the JSON dict it travels as, their meaning, their checks.

    Subclasses are frozen dataclasses, one per built-in step; the class docstring documents every
    field, and a field's name is its spec key (except the fields ``parse`` derives). The spec stays
    a plain JSON dict on the wire (the step entrypoint, a pod's annotation); the step parses it
    first thing, the operator before anything starts (see :func:`~airflow_ml_provider.ml.specs.check_spec`).
    A key given as null takes the field's default, unless the field says otherwise.
    """

    #: the built-in step this spec is the input of
    step: ClassVar[str] = ""
    #: unknown keys are an error (the operators' :data:`VOLATILE_KEYS` are always accepted)
    strict: ClassVar[bool] = False

    @classmethod
    def keys(cls) -> frozenset[str]:
        """The spec keys this type declares."""
        return frozenset(f.name for f in dataclasses.fields(cls) if not f.metadata.get(_DERIVED))

    @classmethod
    def parse(cls, spec: Any) -> Self:
        """
        Check a spec dict and return it as this type.

        :param spec: the step's input, as the operator built it.
        :raises ValueError: naming the first bad key and what to give instead.
        """
        if not isinstance(spec, dict):
            raise ValueError(f"{cls.step}: spec must be a dict, got {type(spec).__name__}.")
        if cls.strict:
            allowed = cls.keys()
            unknown = set(spec) - allowed - VOLATILE_KEYS
            if unknown:
                raise ValueError(
                    f"{cls.step}: unknown spec keys {sorted(unknown)}; allowed: {sorted(allowed)}."
                )
        return cls(**cls._values(spec))

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        """The checked field values of ``spec`` (a dict, its keys checked when ``strict``)."""
        return {}


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Reader:
    """
    Reads the keys of one spec for a type's ``parse``; every error names the key.

    :param spec: the spec dict.
    :param step: the step, the prefix of every message (may be empty).
    :param quoted: name keys as ``<step>: spec key 'name'`` (True) or ``<step>: name`` (False).
    """

    def __init__(self, spec: dict[str, Any], step: str, *, quoted: bool = True) -> None:
        self.spec = spec
        self.step = step
        self.quoted = quoted

    def name(self, key: str) -> str:
        prefix = f"{self.step}: " if self.step else ""
        return f"{prefix}spec key {key!r}" if self.quoted else f"{prefix}{key}"

    def error(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self.name(key)} {problem}")

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``; ``default`` when it is missing or null."""
        value = self.spec.get(key)
        return default if value is None else value

    def required_text(self, key: str, problem: str) -> str:
        """A non-empty string; else ``<name> <problem>``."""
        value = self.spec.get(key)
        if not isinstance(value, str) or not value:
            raise self.error(key, problem)
        return value

    def text(self, key: str, default: str | None = None) -> str | None:
        """A string, or ``default`` when missing or null."""
        value = self.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.error(key, f"must be a string or null, got {value!r}.")
        return value

    def data_format(self, key: str = "format") -> str | None:
        value = self.get(key)
        if value is not None and value not in DATA_FORMATS:
            raise self.error(key, f"must be 'csv', 'parquet' or null, got {value!r}.")
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.get(key, default)
        if value not in options:
            raise self.error(key, f"must be one of {list(options)}, got {value!r}.")
        return value

    def integer(self, key: str, default: int | None, minimum: int) -> int | None:
        """An int >= ``minimum`` (not a bool), or ``default`` when missing or null."""
        value = self.get(key, default)
        if value is not None and (not is_int(value) or value < minimum):
            raise self.error(key, f"must be an int >= {minimum}, got {value!r}.")
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}.")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        """A dict (a copy), or ``{}`` when missing or null."""
        value = self.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"must be a dict, got {value!r}.")
        return dict(value)

    def str_list(self, key: str, problem: str | None = None) -> tuple[str, ...] | None:
        """A list of strings as a tuple, or None when missing or null."""
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise self.error(key, problem or f"must be a list of str, got {value!r}.")
        return tuple(value)
