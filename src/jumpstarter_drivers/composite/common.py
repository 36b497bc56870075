"""What both sides of a composite tree share."""

from __future__ import annotations

#: Label on a :class:`~jumpstarter_drivers.composite.driver.Proxy`'s report: the dotted path of the
#: node it stands for, so a client can name the real node (``board.serial``) instead of the alias.
REF_LABEL = "jumpstarter-toolkit/ref"
