"""cauldron.web: a live web view of every service, on Twisted Web alone.

:class:`~cauldron.web.server.WebService` serves the services page, one page
per service (values pushed by server-sent events, writes by JSON POST) and
its own small JavaScript and CSS.  ``twistd -n cauldron-web`` runs it
(:mod:`cauldron.web.tap`); :func:`runWeb` is the ``cauldron web`` command.
See ``docs/web.rst``.
"""

from cauldron.web.run import runWeb
from cauldron.web.server import WebService

__all__ = ["WebService", "runWeb"]
