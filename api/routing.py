"""The app's routes, matched before routing: which route a request goes to, from a closed set built once.

Middleware outside the router (the request guard, the HTTP metrics) needs the route before the router has chosen
it, or when it never does (a request refused at the door). ``RouteTable`` lists the app's routes once, with their
full templates (``/v1/models/{model:path}``, router prefixes included), and matches a request as the router would:
the first full match, else the first route whose path matches but not its method (the router's 405). Its labels are
those templates and ``unmatched``, nothing a client can invent.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.routing import RouteContext, iter_route_contexts
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

# The OpenAI API's prefix: every module's router (api/app.py's API_MODULES) declares its routes under it.
API_PREFIX = "/v1"
UNMATCHED = "unmatched"
_SCOPE_KEY = "tunery.route"


def _prefix(path: str) -> str:
    """The first two segments of a path (``/v1/files``): the key of :class:`RouteTable`'s index."""
    return "/".join(path.split("/", 3)[:3])


class RouteTable:
    """The app's routes in the router's order, with their full path templates.

    Indexed by their first two segments (``/v1/files``), where these are literal: a request is tried only against the
    routes of its path's two segments and those whose two first segments hold a parameter (in the router's order), not
    against every route of the app (about 120, each a regular expression)."""

    def __init__(self, routes: Sequence[BaseRoute]):
        self.routes: list[RouteContext] = [r for r in iter_route_contexts(routes) if isinstance(r.path, str)]
        self.templates: frozenset[str] = frozenset(str(r.path) for r in self.routes) | {UNMATCHED}
        # A route that may match a longer path than its own (a mount) is tried on every request, as one whose first
        # two segments hold a parameter.
        anywhere = [r for r in self.routes if "{" in _prefix(str(r.path)) or not isinstance(r.original_route, Route)]
        prefixes = {_prefix(str(r.path)) for r in self.routes} - {_prefix(str(r.path)) for r in anywhere}
        order = {id(r): i for i, r in enumerate(self.routes)}
        self._index: dict[str, list[RouteContext]] = {
            prefix: sorted(
                [r for r in self.routes if _prefix(str(r.path)) == prefix] + anywhere, key=lambda r: order[id(r)]
            )
            for prefix in prefixes
        }
        self._anywhere = anywhere

    def match(self, scope: Scope) -> RouteContext | None:
        """The route this request goes to (None: no route has its path). Found once per request, kept in its scope."""
        if _SCOPE_KEY in scope:
            found: RouteContext | None = scope[_SCOPE_KEY]
            return found
        found = None
        for route in self._index.get(_prefix(scope["path"]), self._anywhere):
            match, _ = route.matches(scope)
            if match is Match.FULL:
                found = route
                break
            if match is Match.PARTIAL and found is None:
                found = route
        scope[_SCOPE_KEY] = found
        return found

    def template(self, scope: Scope) -> str:
        """The matched route's template, or ``unmatched``: one of ``templates``."""
        route = self.match(scope)
        return str(route.path) if route is not None else UNMATCHED
