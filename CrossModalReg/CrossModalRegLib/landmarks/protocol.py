"""Landmark protocols: a versioned JSON list of landmark names with what to click, on which image.

A protocol file looks like::

    {
      "schema": "crossmodalreg-landmark-protocol",
      "schema_version": 1,
      "name": "rat kidney H&E / PanCytokeratin",
      "version": "1.0",
      "description": "...",
      "dimension": 3,
      "landmarks": [
        {"label": "L01", "description": "upper pole of the cortex, on the capsule"},
        ...
      ]
    }

``dimension`` is 3 (positions in mm, LPS) or 2 (positions in pixels of the image, x right and y down).
Labels are unique, non-empty and contain no comma, semicolon or line break (they go into CSV files).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..errors import CrossModalRegError
from .storage import write_json_atomic_durable

PROTOCOL_SCHEMA = "crossmodalreg-landmark-protocol"
PROTOCOL_SCHEMA_VERSION = 1
IMAGES = ("fixed", "moving")


@dataclass(frozen=True)
class LandmarkDefinition:
    """One landmark of a protocol: its label and what the annotator must click."""

    label: str
    description: str = ""


@dataclass
class LandmarkProtocol:
    """A named, versioned list of landmarks, placed in this order on the fixed then on the moving image.

    Attributes
    ----------
    name, version : str
        Identify the protocol; both are saved with every annotation made under it.
    landmarks : list of LandmarkDefinition
        Unique labels, in placement order.
    dimension : int
        3 for volumes (mm, LPS) or 2 for 2D images (pixels).
    """

    name: str
    landmarks: list[LandmarkDefinition]
    version: str = "1"
    description: str = ""
    dimension: int = 3
    schema_version: int = field(default=PROTOCOL_SCHEMA_VERSION)

    def __post_init__(self):
        self.landmarks = [
            lm if isinstance(lm, LandmarkDefinition) else LandmarkDefinition(str(lm)) for lm in self.landmarks
        ]
        validate_labels([lm.label for lm in self.landmarks], source=f"protocol '{self.name}'")
        if self.dimension not in (2, 3):
            raise CrossModalRegError(f"protocol '{self.name}': dimension must be 2 or 3, not {self.dimension}")

    @property
    def labels(self) -> list[str]:
        return [lm.label for lm in self.landmarks]

    def description_of(self, label: str) -> str:
        for lm in self.landmarks:
            if lm.label == label:
                return lm.description
        raise CrossModalRegError(self.unknown_label_message(label))

    def unknown_label_message(self, label: str, source: str = "") -> str:
        where = f" in {source}" if source else ""
        return (
            f"unknown landmark label '{label}'{where}: protocol '{self.name}' (version {self.version}) defines "
            f"{_preview(self.labels)}; rename the point or add the label to the protocol"
        )

    def to_dict(self) -> dict:
        return {
            "schema": PROTOCOL_SCHEMA,
            "schema_version": PROTOCOL_SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "dimension": self.dimension,
            "landmarks": [{"label": lm.label, "description": lm.description} for lm in self.landmarks],
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "protocol") -> LandmarkProtocol:
        if not isinstance(data, dict):
            raise CrossModalRegError(f"{source}: a protocol must be a JSON object with a 'landmarks' list")
        if data.get("schema", PROTOCOL_SCHEMA) != PROTOCOL_SCHEMA:
            raise CrossModalRegError(f"{source}: 'schema' is '{data.get('schema')}', expected '{PROTOCOL_SCHEMA}'")
        version = data.get("schema_version", PROTOCOL_SCHEMA_VERSION)
        if not isinstance(version, int) or version > PROTOCOL_SCHEMA_VERSION or version < 1:
            raise CrossModalRegError(
                f"{source}: schema_version {version!r} is not supported (this CrossModalReg reads 1.."
                f"{PROTOCOL_SCHEMA_VERSION}); update CrossModalReg or re-save the protocol"
            )
        if "landmarks" not in data or not isinstance(data["landmarks"], list) or not data["landmarks"]:
            raise CrossModalRegError(f"{source}: 'landmarks' must be a non-empty list of {{label, description}}")
        landmarks = []
        for i, item in enumerate(data["landmarks"]):
            if isinstance(item, str):
                landmarks.append(LandmarkDefinition(item))
            elif isinstance(item, dict) and "label" in item:
                landmarks.append(LandmarkDefinition(str(item["label"]), str(item.get("description", ""))))
            else:
                raise CrossModalRegError(f"{source}: landmark #{i + 1} has no 'label'; give each landmark a label")
        return cls(
            name=str(data.get("name", os.path.basename(source))),
            version=str(data.get("version", "1")),
            description=str(data.get("description", "")),
            dimension=int(data.get("dimension", 3)),
            landmarks=landmarks,
        )


def validate_labels(labels, *, source: str) -> None:
    """Raise :class:`CrossModalRegError` naming the first empty, malformed or duplicate label in ``labels``."""
    seen = set()
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise CrossModalRegError(f"{source}: a landmark has an empty label; give every landmark a unique label")
        if any(c in label for c in ",;\n\r\t"):
            raise CrossModalRegError(f"{source}: label '{label}' contains a comma, semicolon, tab or line break")
        if label in seen:
            raise CrossModalRegError(f"{source}: duplicate landmark label '{label}'; labels must be unique")
        seen.add(label)


def load_protocol(path: str) -> LandmarkProtocol:
    """Read a protocol JSON file (see the module docstring)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError as exc:
        raise CrossModalRegError(f"protocol file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise CrossModalRegError(f"protocol file {path} is not valid JSON: {exc}") from exc
    return LandmarkProtocol.from_dict(data, source=path)


def save_protocol(protocol: LandmarkProtocol, path: str) -> str:
    """Write ``protocol`` as JSON (atomically)."""
    return write_json_atomic_durable(path, protocol.to_dict())


def protocol_from_labels(labels, *, name: str = "ad hoc", dimension: int = 3) -> LandmarkProtocol:
    """A protocol with the given labels and no descriptions (for imported landmark files)."""
    return LandmarkProtocol(name=name, landmarks=[LandmarkDefinition(str(x)) for x in labels], dimension=dimension)


def _preview(labels, n=8):
    labels = list(labels)
    text = ", ".join(f"'{x}'" for x in labels[:n])
    return text + (f", ... ({len(labels)} labels)" if len(labels) > n else "")
