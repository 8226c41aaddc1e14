"""Placement per node type: an engine (or a tuning job's worker) pinned to the nodes of one kind.

A node type is a custom Ray resource that the nodes of that kind are started with, e.g. `ray start --address
... --resources '{"maas-gpu": 1}'` (KubeRay's worker groups declare `maas-cpu` / `maas-gpu` so). Each engine
or worker asks for `NODE_TYPE_SHARE` of it: enough that Ray places it only on such a node, too little to limit
how many fit there (CPUs, GPUs and memory do that).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

NODE_TYPE_SHARE = 0.01
NODE_TYPE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# Ray's own resources: asking for 0.01 of one of these would not say which node, and would take a share of it.
RAY_RESOURCES = frozenset({"CPU", "GPU", "NPU", "TPU", "HPU", "memory", "object_store_memory", "neuron_cores"})


def check_node_type(value: str | None) -> str | None:
    """The node type if it names a custom resource; ValueError (a 400 at the API) otherwise."""
    if value is None:
        return None
    if not NODE_TYPE_PATTERN.fullmatch(value):
        raise ValueError("node_type must be a custom Ray resource name of 1-64 characters: a letter first, then "
                         "letters, digits, - or _ (e.g. maas-gpu)")
    if value in RAY_RESOURCES:
        raise ValueError(f"node_type {value!r} is one of Ray's own resources; name the custom resource the nodes "
                         "of that type are started with (ray start --resources '{\"maas-gpu\": 1}')")
    return value


def node_type_resources(node_type: str | None) -> dict[str, float]:
    """What one engine or worker asks for, besides its CPUs/GPUs, to land on a node of `node_type`."""
    return {node_type: NODE_TYPE_SHARE} if node_type else {}


NodeType = Annotated[str | None, AfterValidator(check_node_type)]
