"""PyQt5 objects presented to module code with PythonQt's semantics, as 3D Slicer's Python sees Qt.

Module code never touches a PyQt5 object directly: it gets a *wrapper* (like PythonQt's instance wrapper) on which
- a ``Q_PROPERTY`` is an attribute: ``w.enabled = False``, ``w.text`` (a str, not a method);
- ``objectName`` is also reachable as ``name`` (PythonQt's alias), dynamic properties are attributes too;
- a signal is an attribute with ``connect``/``disconnect``/``emit``, and ``obj.connect('clicked(bool)', f)``
  connects by the C++ signature; a Python callable receives as many of the signal's arguments as it accepts;
- methods: every public method of a Qt class (PythonQt wraps Qt's classes fully), but for the CTK/qMRML/qSlicer
  widgets of the harness only the public slots and ``Q_INVOKABLE`` methods their headers declare;
- anything else raises ``AttributeError``, as in Slicer.
Wrappers are unique per C++ object (``a is b`` holds, as PythonQt keeps one wrapper per object), and the classes
are named and nested like Qt's (``type(w) == qt.QCheckBox``; ``isinstance(w, qt.QWidget)``), which the
parameterNodeWrapper connectors depend on.

An exception raised in a Python slot is printed to stderr with its traceback and swallowed, as PythonQt does;
the harness also records it in ``SLOT_ERRORS`` so a test can fail on it.

Written here because no library presents PyQt5 with PythonQt's conventions; PyQt5 itself (real Qt) does the work.
"""

from __future__ import annotations

import inspect
import sys
import traceback

from PyQt5 import QtCore, QtGui, QtWidgets, sip

SLOT_ERRORS: list[str] = []

_WRAPPERS: dict[int, PythonQtObject] = {}
_CLASS_CACHE: dict[type, type] = {}


def _address(obj) -> int:
    return sip.unwrapinstance(obj)


def is_harness_class(cls) -> bool:
    """A harness implementation of a Slicer/CTK class declares its C++ API in ``CPP_API``."""
    return "CPP_API" in cls.__dict__


class _WrapperMeta(type):
    """Class-level access (enums, static methods) forwards to the Qt class: ``qt.QFile.ReadOnly``."""

    def __getattr__(cls, name):
        qt_class = cls.__dict__.get("_qt_class") or type.__getattribute__(cls, "_qt_class")
        if name.startswith("__"):
            raise AttributeError(name)
        if is_harness_class(qt_class):
            api = _api_names(qt_class)
            if name not in api["static"] and name not in api["enums"]:
                for base in qt_class.__mro__[1:]:
                    if base.__module__.startswith("PyQt5"):
                        return getattr(wrapper_class(base), name)
                raise AttributeError(f"{cls.__name__} has no attribute {name!r}")
        value = getattr(qt_class, name)
        if callable(value) and not isinstance(value, type) and not isinstance(value, int):
            return _callable(value)
        return value

    def __instancecheck__(cls, obj):
        return type.__instancecheck__(cls, obj)


class PythonQtObject(metaclass=_WrapperMeta):
    """Base of all wrapper classes. ``self._qobj`` is the PyQt5 object."""

    _qt_class = QtCore.QObject

    def __new__(cls, *args, **kwargs):
        qobj = cls._qt_class(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in kwargs.items()})
        return wrap(qobj)

    def __init__(self, *args, **kwargs):  # construction is done in __new__
        pass

    # -- attribute protocol -------------------------------------------------------------------------------------
    def __getattr__(self, name):
        qobj = object.__getattribute__(self, "_qobj")
        return _get(qobj, name, self)

    def __setattr__(self, name, value):
        if name.startswith("_pqt_") or name == "_qobj":
            object.__setattr__(self, name, value)
            return
        qobj = self._qobj
        mo = qobj.metaObject()
        pname = "objectName" if name == "name" else name
        idx = mo.indexOfProperty(pname)
        if idx >= 0:
            prop = mo.property(idx)
            if not prop.isWritable():
                raise AttributeError(f"property {name} of {type(self).__name__} is read-only")
            value = unwrap(value)
            if isinstance(value, tuple):  # PythonQt converts any sequence to a QStringList / QVariantList
                value = list(value)
            if not qobj.setProperty(pname, value):
                raise TypeError(f"cannot set property {name} of {type(self).__name__} to {value!r}")
            return
        if pname.encode() in [bytes(n) for n in qobj.dynamicPropertyNames()]:
            qobj.setProperty(pname, unwrap(value))
            return
        object.__setattr__(self, name, value)  # a Python attribute on the wrapper, as PythonQt allows

    def __eq__(self, other):
        if isinstance(other, PythonQtObject):
            return _address(self._qobj) == _address(other._qobj)
        return NotImplemented

    def __hash__(self):
        return _address(self._qobj)

    def __bool__(self):
        return not sip.isdeleted(self._qobj)

    def __repr__(self):
        return f"{type(self).__name__} ({self._qobj.objectName()!r})"

    # PythonQt adds connect/disconnect to every QObject.
    def connect(self, signal, slot_or_receiver, slot=None):
        if slot is not None:  # obj.connect('sig()', receiver, 'slot()')
            target = _get(unwrap(slot_or_receiver), slot.split("(")[0], slot_or_receiver)
        else:
            target = slot_or_receiver
        return _signal_by_signature(self._qobj, signal, self).connect(target)

    def disconnect(self, signal, slot_or_receiver=None, slot=None):
        target = slot_or_receiver if slot is None else _get(unwrap(slot_or_receiver), slot.split("(")[0],
                                                             slot_or_receiver)
        return _signal_by_signature(self._qobj, signal, self).disconnect(target)


def wrapper_class(qt_class: type) -> type:
    """The wrapper class for a PyQt5 (or harness) QObject class, built once, nested like the Qt classes."""
    if qt_class in _CLASS_CACHE:
        return _CLASS_CACHE[qt_class]
    if qt_class is QtCore.QObject:
        cls = PythonQtObject
    else:
        bases = tuple(wrapper_class(b) for b in qt_class.__bases__ if isinstance(b, type) and
                      issubclass(b, QtCore.QObject)) or (PythonQtObject,)
        cls = _WrapperMeta(qt_class.__name__, bases, {"_qt_class": qt_class, "__module__": "qt",
                                                      "__qualname__": qt_class.__name__})
    _CLASS_CACHE[qt_class] = cls
    return cls


def wrap(value):
    """PyQt5 QObject -> its unique wrapper; lists/tuples element-wise; anything else unchanged."""
    if isinstance(value, PythonQtObject):
        return value
    if isinstance(value, QtCore.QObject):
        if sip.isdeleted(value):
            return None
        key = _address(value)
        w = _WRAPPERS.get(key)
        if w is not None and w._qobj is value:
            return w
        w = object.__new__(wrapper_class(type(value)))
        object.__setattr__(w, "_qobj", value)
        _WRAPPERS[key] = w
        value.destroyed.connect(lambda *a, k=key: _WRAPPERS.pop(k, None))
        return w
    if isinstance(value, list):
        return [wrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    return value


def unwrap(value):
    if isinstance(value, PythonQtObject):
        return value._qobj
    if isinstance(value, type) and issubclass(value, PythonQtObject):
        return value._qt_class
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(unwrap(v) for v in value)
    return value


def _callable(fn):
    def call(*args, **kwargs):
        return wrap(fn(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in kwargs.items()}))

    call.__name__ = getattr(fn, "__name__", "method")
    call.__doc__ = getattr(fn, "__doc__", None)
    return call


def _api_names(qt_class) -> dict:
    api = qt_class.CPP_API
    return {"methods": set(api.get("slots", ())) | set(api.get("invokables", ())),
            "static": set(api.get("static", ())), "enums": set(api.get("enums", ()))}


def _signal_names(mo) -> dict:
    names = {}
    for i in range(mo.methodCount()):
        m = mo.method(i)
        if m.methodType() == QtCore.QMetaMethod.Signal:
            names.setdefault(bytes(m.name()).decode(), []).append(bytes(m.methodSignature()).decode())
    return names


def _get(qobj, name, wrapper):
    """Attribute lookup with PythonQt's precedence: property, signal, declared method, child-free Python attr."""
    if sip.isdeleted(qobj):
        raise RuntimeError(f"the C++ object of {type(wrapper).__name__} was deleted")
    mo = qobj.metaObject()
    pname = "objectName" if name == "name" else name
    idx = mo.indexOfProperty(pname)
    if idx >= 0:
        return wrap(qobj.property(pname))
    if pname.encode() in [bytes(n) for n in qobj.dynamicPropertyNames()]:
        return wrap(qobj.property(pname))
    cpp_signals = _cpp_signals(type(qobj))
    if name in {s.split("(")[0] for s in cpp_signals}:
        return BoundSignal(qobj, name, wrapper, _first_signature(type(qobj), name))
    for cls in type(qobj).__mro__:
        if is_harness_class(cls):
            if name in _api_names(cls)["methods"] or name in _api_names(cls)["static"]:
                return _callable(getattr(qobj, name))
            continue
        if not cls.__module__.startswith("PyQt5"):
            continue  # harness-internal Python helpers are not visible
        if name in cls.__dict__:
            attr = getattr(qobj, name)
            if isinstance(attr, QtCore.pyqtBoundSignal):
                return BoundSignal(qobj, name, wrapper, None)
            if callable(attr):
                return _callable(attr)
            return attr
    raise AttributeError(f"{type(wrapper).__name__} has no attribute {name!r} (PythonQt would not expose it)")


def _cpp_signals(cls) -> dict:
    """C++ signature -> PyQt5 signal attribute name, for every harness class in the MRO."""
    out = {}
    for c in cls.__mro__:
        if is_harness_class(c):
            for sig in c.CPP_API.get("signals", ()):
                out.setdefault(sig, sig.split("(")[0])
    return out


def _first_signature(cls, name):
    for c in cls.__mro__:
        if is_harness_class(c):
            for sig in c.CPP_API.get("signals", ()):
                if sig.split("(")[0] == name:
                    return sig
    return None


def _signal_by_signature(qobj, signature: str, wrapper) -> BoundSignal:
    norm = bytes(QtCore.QMetaObject.normalizedSignature(signature)).decode()
    if norm in _cpp_signals(type(qobj)):
        return BoundSignal(qobj, norm.split("(")[0], wrapper, norm)
    mo = qobj.metaObject()
    for i in range(mo.methodCount()):
        m = mo.method(i)
        if m.methodType() == QtCore.QMetaMethod.Signal and bytes(m.methodSignature()).decode() == norm:
            return BoundSignal(qobj, norm.split("(")[0], wrapper, norm)
    raise AttributeError(f"{type(wrapper).__name__} has no signal {signature}")


def _accepted_positional(fn) -> int | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    n = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


class BoundSignal:
    """``obj.sig`` in PythonQt: ``connect(callable)``, ``disconnect(callable)``, ``emit(*args)``."""

    def __init__(self, qobj, name, wrapper, signature):
        self._qobj, self._name, self._wrapper, self._signature = qobj, name, wrapper, signature

    def _pyqt_signal(self):
        sig = getattr(self._qobj, self._name)
        if self._signature and not self._signature.endswith("()"):
            args = self._signature[self._signature.index("(") + 1:-1].split(",")
            harness = _cpp_signals(type(self._qobj))
            if self._signature in harness:
                mapping = getattr(type(self._qobj), "PYQT_SIGNAL_OVERLOADS", {})
                key = mapping.get(self._signature)
                return sig[key] if key is not None else sig
            try:
                return sig[args[0]] if len(args) == 1 else sig[tuple(args)]
            except (KeyError, TypeError):
                return sig
        return sig

    def _adapters(self):
        store = self._wrapper.__dict__.setdefault("_pqt_adapters", {})
        return store

    def connect(self, fn):
        n = _accepted_positional(fn)
        nargs = 0
        if self._signature:
            inner = self._signature[self._signature.index("(") + 1:-1]
            nargs = len(inner.split(",")) if inner else 0

        def adapter(*args):
            args = [wrap(a) for a in args[:nargs]] if self._signature else [wrap(a) for a in args]
            if n is not None:
                args = args[:n]
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - PythonQt prints and swallows exceptions raised in slots
                text = traceback.format_exc()
                SLOT_ERRORS.append(text)
                sys.stderr.write(text)

        self._adapters().setdefault((self._name, self._signature, _key(fn)), []).append(adapter)
        self._pyqt_signal().connect(adapter)
        return True

    def disconnect(self, fn=None):
        adapters = self._adapters()
        keys = [k for k in adapters if k[0] == self._name and (fn is None or k[2] == _key(fn))]
        if not keys:
            return False
        for k in keys:
            for adapter in adapters.pop(k):
                try:
                    self._pyqt_signal().disconnect(adapter)
                except TypeError:
                    pass
        return True

    def emit(self, *args):
        self._pyqt_signal().emit(*[unwrap(a) for a in args])


def _key(fn):
    # Bound methods are re-created at every attribute access: compare by (function, instance).
    if inspect.ismethod(fn):
        return (fn.__func__, id(fn.__self__))
    return fn


_QT_MODULES = (QtCore, QtGui, QtWidgets)


def qt_namespace_getattr(name):
    """``qt.<Name>``: QObject classes as wrapper classes, value classes and namespaces (``qt.Qt``) as PyQt5's."""
    for mod in _QT_MODULES:
        value = getattr(mod, name, None)
        if value is None:
            continue
        if isinstance(value, type) and issubclass(value, QtCore.QObject):
            return wrapper_class(value)
        return value
    raise AttributeError(f"module 'qt' has no attribute {name!r}")
