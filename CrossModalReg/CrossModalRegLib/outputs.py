"""Output nodes chosen in a module's selectors: never one of the inputs, never two outputs in one node.

A module's output selectors (tables, transforms, volumes, plots) list every node of their class, inputs included.
Writing an output into an input destroys the user's data (the fixed volume chosen as "Expected TRE map" would be
overwritten or deleted), so every module checks its outputs with :func:`check_outputs` before it computes or
changes anything. Qt-free: works on MRML nodes only.
"""

from __future__ import annotations

from .errors import CrossModalRegError


def _name(node) -> str:
    return node.GetName() or node.GetID() or "?"


def _key(node):
    # The MRML ID identifies a node in its scene; two Python wrappers of one node compare equal by it.
    return node.GetID() or id(node)


def check_outputs(inputs: dict, outputs: dict, *, protected_transforms: dict | None = None) -> None:
    """Refuse outputs that are inputs, or the same node chosen for two outputs.

    Parameters
    ----------
    inputs : dict
        Role (as the user reads it, e.g. "fixed volume") -> node or None.
    outputs : dict
        Role (e.g. "expected TRE map") -> node or None (None: a new node will be made).
    protected_transforms : dict, optional
        Role -> volume node: an output transform must not be the transform that volume is already under (the
        fixed volume's own placement would be overwritten).

    Raises
    ------
    CrossModalRegError
        Naming the output selector, the node and what to choose instead. Nothing is changed.
    """
    given_inputs = {_key(n): (role, n) for role, n in inputs.items() if n is not None}
    seen = {}
    for role, node in outputs.items():
        if node is None:
            continue
        if _key(node) in given_inputs:
            in_role, _ = given_inputs[_key(node)]
            raise CrossModalRegError(
                f"the {role} output is set to '{_name(node)}', which is the {in_role} (an input): it would be "
                f"overwritten. Choose another node or 'Create new' in the {role} selector")
        if _key(node) in seen:
            raise CrossModalRegError(
                f"'{_name(node)}' is chosen both as the {seen[_key(node)]} and as the {role} output: one would "
                f"overwrite the other. Choose a different node for one of them")
        seen[_key(node)] = role
    for role, volume in (protected_transforms or {}).items():
        if volume is None:
            continue
        parent = volume.GetParentTransformNode()
        for out_role, node in outputs.items():
            if node is not None and parent is not None and _key(node) == _key(parent):
                raise CrossModalRegError(
                    f"the {out_role} output is '{_name(node)}', the transform the {role} is placed under: it "
                    f"would move the {role}. Choose another transform or 'Create new' in the {out_role} selector")
