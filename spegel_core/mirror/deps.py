"""Dependencies of the routes (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from spegel_core.mirror.pulls import PullService
from spegel_core.mirror.service import MirrorService
from spegel_core.node import Node


def get_node(request: Request) -> Node:
    """The :class:`~spegel_core.node.Node` the app was created for."""
    node: Node = request.app.state.node
    return node


def get_service(request: Request) -> MirrorService:
    """The app's :class:`~spegel_core.mirror.service.MirrorService`."""
    service: MirrorService = request.app.state.service
    return service


def get_pulls(request: Request) -> PullService:
    """The app's :class:`~spegel_core.mirror.pulls.PullService`."""
    pulls: PullService = request.app.state.pulls
    return pulls


NodeDep = Annotated[Node, Depends(get_node)]
ServiceDep = Annotated[MirrorService, Depends(get_service)]
PullDep = Annotated[PullService, Depends(get_pulls)]
