"""Identity and ownership shared by every object of the data model.

Every object (container ``C``, storage ``S``, view ``V``, pod ``P``,
geometry ``G``) carries a string ``ID`` that is unique within its owner.
Owners keep a pool of the objects they own, grouped by ID prefix, which is
how a container finds its storages and views and a reconstruction finds its
pods.
"""

__all__ = ["Base", "make_id"]


def make_id(prefix, ID, taken):
    """Return the ID an object gets in an owner.

    Parameters
    ----------
    prefix : str
        Class prefix, e.g. ``'S'`` for storages.
    ID : None, int or str
        Requested ID. ``None`` gives ``prefix + '%04d' % n`` where ``n``
        counts the objects already in ``taken`` (bumped until free); an int
        gives ``prefix + '%04d' % ID``; a string already starting with
        ``prefix`` is kept, any other string gets the prefix prepended.
    taken : collection of str
        IDs already used in this owner.
    """
    if ID is None:
        n = len(taken)
        new = prefix + "%04d" % n
        while new in taken:
            n += 1
            new = prefix + "%04d" % n
        return new
    if isinstance(ID, (int,)) and not isinstance(ID, bool):
        return prefix + "%04d" % ID
    ID = str(ID)
    return ID if ID.startswith(prefix) else prefix + ID


class Base:
    """Root of the data model: an ID, an owner and a pool of owned objects.

    ``Base`` is slotted, so a plain instance takes no new attributes;
    subclass it once (``class Base2(Base): pass``) to get a free-form
    managing object, as the tutorials do.

    Parameters
    ----------
    owner : Base or None
        The object that owns this one. With an owner, ``ID`` is made unique
        in the owner's pool (see :func:`make_id`); without one, ``ID`` is
        kept as given (``None`` included).
    ID : None, int or str
        Requested identifier.
    BeOwner : bool
        Whether this object can own others (has a pool).
    """

    _PREFIX = "B"
    __slots__ = ("ID", "owner", "_pool", "__weakref__")

    def __init__(self, owner=None, ID=None, BeOwner=True):
        self.owner = owner
        self._pool = {} if BeOwner else None
        if owner is not None:
            owner._new_ptypy_object(self, ID)
        else:
            self.ID = None if ID is None else make_id(self._PREFIX, ID, ())

    def _new_ptypy_object(self, obj, ID=None):
        """Register ``obj`` in this owner's pool and give it its ID."""
        if self._pool is None:
            raise TypeError("%s cannot own objects (BeOwner=False)" % type(self).__name__)
        pool = self._pool.setdefault(obj._PREFIX, {})
        obj.ID = make_id(obj._PREFIX, ID, pool)
        pool[obj.ID] = obj
        return obj.ID

    def _pool_of(self, prefix):
        """The dict ``ID -> object`` of owned objects with ``prefix``."""
        return self._pool.setdefault(prefix, {})

    def _forget(self, obj):
        """Remove ``obj`` from this owner's pool (no error when absent)."""
        if self._pool is not None:
            self._pool.get(obj._PREFIX, {}).pop(obj.ID, None)
