"""Read the Qt-visible API of a Slicer/CTK widget from its C++ header in ../shared/slicer-5.10.

PythonQt exposes to Python exactly: every ``Q_PROPERTY`` (as an attribute), every signal (``signals:``), every
public slot (``public slots:``) and every ``Q_INVOKABLE`` method, plus what the Qt base class exposes. This parser
extracts those four sets by name from one header (the class's own declarations, not inherited ones). It is a
small regular-expression reader written here because no C++ parser is available to the test environment (libclang
is not a dependency); it handles what the Slicer and CTK headers use: multi-line declarations, ``//`` and ``/* */``
comments, ``Q_SIGNALS``/``Q_SLOTS`` spellings and ``#if`` alternatives (both branches are read).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

SHARED = pathlib.Path(__file__).resolve().parents[3] / "shared" / "slicer-5.10"

#: Where the header of each harness widget lives in ../shared/slicer-5.10.
HEADER_PATHS = {
    "qMRMLNodeComboBox": "slicer/Libs/MRML/Widgets/qMRMLNodeComboBox.h",
    "qMRMLWidget": "slicer/Libs/MRML/Widgets/qMRMLWidget.h",
    "ctkCollapsibleButton": "ctk/Libs/Widgets/ctkCollapsibleButton.h",
    "ctkSliderWidget": "ctk/Libs/Widgets/ctkSliderWidget.h",
    "ctkPathLineEdit": "ctk/Libs/Widgets/ctkPathLineEdit.h",
}


@dataclasses.dataclass
class HeaderApi:
    class_name: str
    base: str
    properties: dict  # name -> {"type": ..., "read": ..., "write": ..., "notify": ...}
    signals: set  # normalised signatures, e.g. "currentNodeChanged(vtkMRMLNode*)"
    slots: set  # method names
    invokables: set  # method names

    @property
    def signal_names(self) -> set:
        return {s.split("(")[0] for s in self.signals}


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def normalize_signature(name: str, params: str) -> str:
    """``currentNodeIDChanged(const QString& id)`` -> ``currentNodeIDChanged(QString)`` (Qt's normalisation)."""
    types = []
    for p in _split_params(params):
        p = p.split("=")[0].strip()
        if not p or p == "void":
            continue
        p = re.sub(r"\bconst\b", "", p).replace("&", " ")
        p = re.sub(r"\s*\*\s*", "* ", p).strip()
        tokens = p.split()
        # Drop the parameter name: the last token when more than one remains and it is not a pointer star.
        if len(tokens) > 1 and not tokens[-1].endswith("*"):
            tokens = tokens[:-1]
        types.append("".join(t if t.endswith("*") else t + " " for t in tokens).strip().replace(" *", "*"))
    return f"{name}({','.join(types)})"


def _split_params(params: str):
    depth, cur, out = 0, "", []
    for ch in params:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


_DECL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(([^;{}]*?)\)\s*(?:const)?\s*(?:override)?\s*(?:=\s*0)?\s*$", re.S)


def parse_header(class_name: str, path: pathlib.Path | None = None) -> HeaderApi:
    path = path or SHARED / HEADER_PATHS[class_name]
    text = _strip_comments(path.read_text())
    m = re.search(r"class\s+(?:\w+_EXPORT\s+)?" + class_name + r"\s*:\s*public\s+(\w+)\s*\{", text)
    if not m:
        raise ValueError(f"class {class_name} not found in {path}")
    body = text[m.end():]
    # The class body ends at the first "};" at brace depth 0.
    depth, end = 1, 0
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                end = i
                break
    body = body[:end]
    body = re.sub(r"^\s*#.*$", " ", body, flags=re.M)  # keep both branches of #if
    props = {}
    for pm in re.finditer(r"Q_PROPERTY\s*\(([^)]*)\)", body):
        words = pm.group(1).split()
        # "QComboBox::SizeAdjustPolicy sizeAdjustPolicy READ ..." : name is the word before READ/MEMBER.
        idx = next(i for i, w in enumerate(words) if w in ("READ", "MEMBER"))
        info = {"type": " ".join(words[: idx - 1]), "name": words[idx - 1]}
        for key in ("READ", "WRITE", "NOTIFY"):
            if key in words:
                info[key.lower()] = words[words.index(key) + 1]
        props[info["name"]] = info
    signals, slots, invokables = set(), set(), set()
    section = "private"
    # Walk statements; a statement is ended by ';' or a '{...}' inline body.
    tokens = re.split(r"(\b(?:public|protected|private)\s+(?:slots|Q_SLOTS)\s*:|\b(?:signals|Q_SIGNALS)\s*:|"
                      r"\b(?:public|protected|private)\s*:)", body)
    for tok in tokens:
        head = re.match(r"\b(public|protected|private)?\s*(slots|Q_SLOTS|signals|Q_SIGNALS)?\s*:$", tok.strip())
        if tok.strip() and head and tok.strip().endswith(":") and (head.group(1) or head.group(2)):
            access, kind = head.group(1), head.group(2)
            if kind in ("signals", "Q_SIGNALS"):
                section = "signals"
            elif kind in ("slots", "Q_SLOTS"):
                section = f"{access}_slots"
            else:
                section = access
            continue
        chunk = re.sub(r"\{[^{}]*\}", ";", tok)  # inline bodies end a declaration
        for stmt in chunk.split(";"):
            stmt = " ".join(stmt.split())
            if not stmt or stmt.startswith(("Q_OBJECT", "Q_PROPERTY", "Q_DECLARE", "Q_DISABLE", "Q_FLAG",
                                            "Q_ENUM", "Q_PRIVATE", "typedef", "friend", "enum", "using")):
                continue
            dm = _DECL.search(stmt)
            if not dm:
                continue
            name, params = dm.group(1), dm.group(2)
            if name in (class_name, "~" + class_name) or stmt.startswith("~"):
                continue
            if section == "signals":
                signals.add(normalize_signature(name, params))
            elif section == "public_slots":
                slots.add(name)
            elif "Q_INVOKABLE" in stmt and section == "public":
                invokables.add(name)
    return HeaderApi(class_name, m.group(1), props, signals, slots, invokables)
