"""Containers, storages, views and pods: how ptycli addresses its data.

* A :class:`Container` groups the storages of one kind of data (probe,
  object, exit waves, diffraction, mask) and the views onto them.
* A :class:`Storage` wraps one numpy buffer of shape ``(layers, rows, cols)``
  with a physical coordinate system: a pixel size ``psize`` (metres per
  pixel, per axis) and the pixel ``center`` of the physical origin.
* A :class:`View` is a light, physically placed 2D window into a storage
  layer: it is positioned by a coordinate in metres and a shape in pixels,
  and resolves to a live slice of the buffer.
* A :class:`POD` ("ptychographic object descriptor") ties together the probe,
  object, exit-wave, diffraction and mask views of one coherent propagation
  and the geometry that propagates between the sample and detector planes.

The object graph is for building and addressing; engines compile it into
batched address arrays and do the per-pixel work on whole buffers.

(About 800 lines, on purpose: the four classes form one object graph (a View
resolves into its Storage, a Container owns both and keeps them in step, a POD
ties the views of one propagation) and mirror the classic data model the
tutorials use; split into modules they would import each other.)
"""

import numpy as np

from .. import parallel
from ..utils.param_tree import Param
from . import fft
from .base import Base, make_id

__all__ = ["Base", "Container", "Storage", "View", "POD", "DEFAULT_ACCESSRULE"]

#: Default access rule for a :class:`View` (copy it, then change entries).
DEFAULT_ACCESSRULE = Param(
    storageID=None,  # ID of the storage the view reads (created when absent)
    shape=None,  # view shape in pixels, int or (rows, cols)
    coord=None,  # physical position of the view centre (m), scalar or (y, x)
    psize=1.0,  # pixel size (m); None takes the storage's
    layer=0,  # layer index (not buffer row) in the storage
    active=True,  # whether the view takes part in reformat and updates
)

_MB = 1e6

_REPORT_HEADER = (
    "(C)ontnr : Memory : Shape            : Pixel size      : Dimensions      : Views\n"
    "(S)torgs : (MB)   : (Pixel)          : (meters)        : (meters)        : act.\n"
    + "-" * 80
    + "\n"
)


def _pair(value, dtype=float):
    """Return ``value`` (scalar or length-2 sequence) as an ndarray of 2."""
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        arr = np.array([arr, arr], dtype=dtype)
    if arr.shape != (2,):
        raise ValueError("expected a scalar or a pair (rows, cols), got %r" % (value,))
    return arr


def _sci_pair(values):
    """Format a pair as ``'1.3*1.3e-5'``: mantissas with the first value's exponent."""
    a, b = float(values[0]), float(values[1])
    exponent = int(np.floor(np.log10(abs(a)))) if a != 0 else 0
    scale = 10.0**exponent
    return "%.1f*%.1fe%d" % (a / scale, b / scale, exponent)


class Storage(Base):
    """One data buffer of a container, with a physical coordinate system.

    Parameters
    ----------
    container : Container
        The owning container; it sets the data type.
    ID : None, int or str
        Storage ID (``'S0000'``-style when None).
    data : ndarray, optional
        Initial buffer; 2D input gets a leading layer axis. Copied and cast to
        the container's data type.
    shape : int or tuple, optional
        Buffer shape when ``data`` is not given: ``(layers, rows, cols)`` or
        ``(rows, cols)`` for one layer. Default ``(1, 1, 1)``.
    fill : scalar
        Value of a new buffer and of pixels added by :meth:`reformat`
        (``fill_value``).
    psize : float or pair
        Pixel size in metres per axis (rows, cols).
    origin : pair, optional
        Physical coordinate (m) of pixel ``[0, 0]``; overrides ``center``.
    center : pair, optional
        Pixel position of the physical origin; default ``shape[-2:] // 2``.
    layermap : list of int, optional
        Layer index held by each buffer row; default ``0 .. layers-1``.
    padonly : bool
        Whether :meth:`reformat` only ever grows the buffer.

    Attributes
    ----------
    slices : int
        Object storages of a multislice sample (``sample.slices``): the
        number of slices along the beam; the layers are the slices in beam
        order (layer 0 is the entrance slice, the one the pods view). 1 for
        every other storage.
    slice_distance : float or None
        Distance between neighbouring slices (m); None unless ``slices > 1``.
    """

    _PREFIX = "S"
    slices = 1
    slice_distance = None

    def __init__(self, container, ID=None, data=None, shape=(1, 1, 1), fill=0.0,
                 psize=1.0, origin=None, center=None, layermap=None, padonly=False,
                 **kwargs):
        super().__init__(container, ID, BeOwner=False)
        self.dtype = np.dtype(container.dtype)
        self.fill_value = fill
        self.padonly = padonly
        self._views = {}
        if data is not None:
            data = np.asarray(data)
            if data.ndim == 2:
                data = data[np.newaxis]
            self.data = np.array(data, dtype=self.dtype, copy=True)
        else:
            if shape is None:
                shape = (1, 1, 1)
            shape = tuple(int(s) for s in np.atleast_1d(shape))
            if len(shape) == 1:
                shape = (1, shape[0], shape[0])
            elif len(shape) == 2:
                shape = (1,) + shape
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError("storage shape must be (layers, rows, cols) of positive sizes, got %r" % (shape,))
            # aligned for FFTW: engines may transform a storage in place (ML uses the exit storage)
            self.data = fft.empty(shape, dtype=self.dtype)
            self.data.fill(fill)
        self.layermap = range(self.data.shape[0]) if layermap is None else layermap
        if len(self.layermap) != self.data.shape[0]:
            raise ValueError("layermap has %d entries for %d buffer layers" % (len(self.layermap), self.data.shape[0]))
        self._psize = _pair(psize)
        self._center = np.array(self.data.shape[-2:]) // 2
        if center is not None:
            self.center = center
        if origin is not None:
            self.origin = origin

    # -- coordinate system ------------------------------------------------
    @property
    def layermap(self):
        """Layer index held by each buffer row (a list)."""
        return self._layermap

    @layermap.setter
    def layermap(self, value):
        self._layermap = [int(v) for v in value]
        self._rowmap = {layer: row for row, layer in enumerate(self._layermap)}

    @property
    def psize(self):
        """Pixel size in metres, ndarray ``(rows, cols)``; setting keeps ``center``."""
        return self._psize

    @psize.setter
    def psize(self, value):
        self._psize = _pair(value)

    @property
    def center(self):
        """Pixel position of the physical origin; setting moves ``origin``."""
        return self._center

    @center.setter
    def center(self, value):
        integer = np.issubdtype(np.asarray(value).dtype, np.integer)
        self._center = _pair(value, dtype=int if integer else float)

    @property
    def origin(self):
        """Physical coordinate (m) of pixel ``[0, 0]``; setting moves ``center``."""
        return -self._center * self._psize

    @origin.setter
    def origin(self, value):
        self._center = -_pair(value) / self._psize

    @property
    def shape(self):
        """Buffer shape ``(layers, rows, cols)``."""
        return self.data.shape

    @property
    def nlayers(self):
        """Number of buffer layers."""
        return self.data.shape[0]

    @property
    def nbytes(self):
        """Buffer size in bytes."""
        return self.data.nbytes

    @property
    def views(self):
        """Views (active or not) that address this storage, in creation order."""
        return list(self._views.values())

    def grids(self):
        """Physical coordinate grids ``(y, x)`` in metres, each of the buffer's shape.

        Pixel ``i`` along an axis sits at ``(i - center) * psize``.
        """
        rows, cols = self.data.shape[-2:]
        y = (np.arange(rows) - self._center[0]) * self._psize[0]
        x = (np.arange(cols) - self._center[1]) * self._psize[1]
        shape = self.data.shape
        return (np.broadcast_to(y[:, None], shape).copy(), np.broadcast_to(x[None, :], shape).copy())

    # -- data ---------------------------------------------------------------
    @property
    def released(self):
        """Whether the buffer was given back (:meth:`release`): ``data`` is a read-only stand-in of zeros."""
        return not self.data.flags.writeable and self.data.size > 0 and self.data.strides == (0,) * self.data.ndim

    def release(self):
        """Give the buffer's memory back; ``data`` becomes a read-only stand-in of the same shape and type.

        The stand-in (zeros, no memory) keeps shapes and sizes readable; any
        write to it raises. :meth:`allocate` makes a buffer again. For
        storages whose contents the model can rebuild (exit waves of engines
        that keep none between iterations).
        """
        self.data = np.broadcast_to(np.zeros((), dtype=self.dtype), self.data.shape)

    def allocate(self):
        """A fresh (uninitialised, aligned) buffer after :meth:`release`; returns True when it made one."""
        if not self.released:
            return False
        self.data = fft.empty(self.data.shape, dtype=self.dtype)
        return True

    def fill(self, fill=None):
        """Fill the buffer.

        Parameters
        ----------
        fill : scalar or ndarray, optional
            A scalar fills every pixel (default ``fill_value``); a 2D array of
            the frame shape is copied into every layer; an array of the
            buffer's shape is copied. A 3D array of another shape replaces
            the buffer (the layer map is reset when the layer count changes).
        """
        if fill is None:
            fill = self.fill_value
        fill = np.asarray(fill)
        if fill.ndim == 0 or fill.shape == self.data.shape[-fill.ndim:]:
            self.data[...] = fill
        elif fill.ndim == 3:
            self.data = np.array(fill, dtype=self.dtype, copy=True)
            if len(self.layermap) != self.data.shape[0]:
                self.layermap = list(range(self.data.shape[0]))
            self.update_views()
        else:
            raise ValueError("cannot fill storage %s of shape %s with an array of shape %s"
                             % (self.ID, self.data.shape, fill.shape))

    def __getitem__(self, v):
        if isinstance(v, View):
            return self.data[v.slice]
        return self.data[v]

    def __setitem__(self, v, value):
        if isinstance(v, View):
            self.data[v.slice] = value
        else:
            self.data[v] = value

    # -- views --------------------------------------------------------------
    def _attach(self, view):
        self._views[view.ID] = view

    def _detach(self, view):
        self._views.pop(view.ID, None)

    def update_views(self, v=None):
        """Recompute the buffer address of views from their physical placement.

        Parameters
        ----------
        v : View, list of View or None
            The view(s) to place; None places every view of this storage.
        """
        if v is None:
            views = self._views.values()
        elif isinstance(v, View):
            views = [v]
        else:
            views = v
        origin = self.origin
        for view in views:
            view._place(self, origin, self._rowmap)

    def get_view_coverage(self):
        """Number of active views covering each pixel, an array of the buffer's shape."""
        coverage = np.zeros(self.data.shape, dtype=self.data.real.dtype)
        for view in self._views.values():
            if view.active and view.dlayer is not None:
                coverage[view.slice] += 1
        return coverage

    def reformat(self, newID=None, update=True):
        """Crop or pad the buffer so that exactly the active views fit.

        Per axis the new buffer spans the smallest ``dlow`` to the largest
        ``dhigh`` of the active views (only growing when ``padonly``); the
        layers are exactly those the active views use, sorted (the current
        ones kept too when ``padonly``). ``center`` shifts with the crop so
        physical coordinates stay put; new pixels get ``fill_value``.
        A storage without active views is left as it is.

        Returns
        -------
        Storage
            ``self``.
        """
        if update:
            self.update_views()
        bounds = self.view_bounds()
        if bounds is None:
            return self
        low, high, layers = bounds
        if self.padonly:
            low = np.minimum(low, 0)
            high = np.maximum(high, self.data.shape[-2:])
            layers = sorted(set(layers) | set(self.layermap))
        return self.resize(low, high, layers)

    def view_bounds(self):
        """``(low, high, layers)`` spanned by the active views, or None without any.

        ``low``/``high`` are per-axis buffer indices (``min dlow``, ``max dhigh``)
        and ``layers`` the sorted layer indices the active views use.
        """
        active = [v for v in self._views.values() if v.active]
        if not active:
            return None
        low = np.min([v.dlow for v in active], axis=0)
        high = np.max([v.dhigh for v in active], axis=0)
        return low, high, sorted({v.layer for v in active})

    def resize(self, low, high, layers=None):
        """Make the buffer span pixel indices ``low`` to ``high`` and hold ``layers``.

        Indices are relative to the current buffer (they may be negative or
        beyond its end); data in the overlap is kept, new pixels and layers
        get ``fill_value``, and ``center`` shifts so that physical
        coordinates stay put. Views are re-placed.
        """
        low = np.asarray(low, dtype=int)
        high = np.asarray(high, dtype=int)
        layers = list(self.layermap) if layers is None else [int(v) for v in layers]
        old_shape = np.array(self.data.shape[-2:])
        new_shape = high - low
        if np.any(new_shape < 1):
            raise ValueError("storage %s: empty bounds %s..%s" % (self.ID, low, high))
        if (np.all(low == 0) and np.all(new_shape == old_shape) and layers == self.layermap):
            return self
        new = np.empty((len(layers),) + tuple(int(n) for n in new_shape), dtype=self.dtype)
        new.fill(self.fill_value)
        # overlap of the old buffer with the new window, in old pixel indices
        src_lo = np.maximum(low, 0)
        src_hi = np.minimum(high, old_shape)
        if np.all(src_hi > src_lo):
            dst_lo = src_lo - low
            dst_hi = src_hi - low
            old_rows = {layer: row for row, layer in enumerate(self.layermap)}
            for new_row, layer in enumerate(layers):
                old_row = old_rows.get(layer)
                if old_row is not None:
                    new[new_row, dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1]] = \
                        self.data[old_row, src_lo[0]:src_hi[0], src_lo[1]:src_hi[1]]
        self.data = new
        self.layermap = layers
        self._center = self._center - low
        self.update_views()
        return self

    # -- reporting ----------------------------------------------------------
    def formatted_report(self, offset=8, include_header=True):
        """A report line (with table header) for this storage.

        Returns
        -------
        (str, dict)
            The table text and the values it shows.
        """
        info = dict(
            ID=self.ID,
            memory_mb=self.nbytes / _MB,
            shape=self.data.shape,
            psize=self._psize.copy(),
            dimension=np.array(self.data.shape[-2:]) * self._psize,
            views=sum(1 for v in self._views.values() if v.active),
        )
        line = "%s : %6.1f : %16s : %15s : %15s : %5d" % (
            str(self.ID).ljust(offset),
            info["memory_mb"],
            " * ".join(str(s) for s in info["shape"]),
            _sci_pair(info["psize"]),
            _sci_pair(info["dimension"]),
            info["views"],
        )
        text = (_REPORT_HEADER if include_header else "") + line + "\n"
        return text, info

    def __str__(self):
        return "%15s : %7.2f MB :: data=%s @%s psize=%s center=%s" % (
            self.ID, self.nbytes / _MB, self.data.shape, self.dtype, self._psize, self._center)

    __repr__ = __str__


class View(Base):
    """A physically placed 2D window into one layer of a storage.

    Parameters
    ----------
    container : Container
        The container holding the storage this view reads.
    ID : None, int or str
        View ID (``'V0000'``-style when None).
    accessrule : dict or Param, optional
        Entries of :data:`DEFAULT_ACCESSRULE`; keyword arguments override
        them. A storage named by ``storageID`` that does not exist is created
        with shape ``(1,) + shape`` and the view's pixel size.

    Attributes
    ----------
    dlayer : int or None
        Buffer row of ``layer`` (None until the storage holds that layer;
        :meth:`Storage.reformat` adds it).
    pcoord : ndarray
        Exact pixel position of ``coord`` in the buffer.
    dcoord : ndarray of int
        Nearest pixel, ``round(pcoord)``.
    dlow, dhigh : ndarray of int
        Buffer index range ``dcoord - shape // 2`` to ``dcoord + (shape + 1) // 2``.
    sp : ndarray
        Sub-pixel remainder ``pcoord - dcoord``.
    pods : dict
        Pods that use this view, by ID.
    """

    _PREFIX = "V"
    DEFAULT_ACCESSRULE = DEFAULT_ACCESSRULE

    def __init__(self, container, ID=None, accessrule=None, **kwargs):
        super().__init__(container, ID, BeOwner=False)
        self.pods = {}
        self.storage = None
        self.dlayer = None
        self.pcoord = self.dcoord = self.dlow = self.dhigh = self.sp = None
        self._slice = None
        rule = DEFAULT_ACCESSRULE.copy()
        if accessrule is not None:
            rule.update(accessrule)
        rule.update(kwargs)
        self._set_accessrule(rule)

    @property
    def container(self):
        """The container this view belongs to."""
        return self.owner

    def _set_accessrule(self, rule):
        if rule["storageID"] is None:
            raise ValueError("a view needs a storageID in its access rule")
        if rule["shape"] is None:
            raise ValueError("a view needs a shape in its access rule")
        self.storageID = str(rule["storageID"])
        self.shape = _pair(rule["shape"], dtype=int)
        if np.any(self.shape < 1):
            raise ValueError("view shape must be positive, got %r" % (rule["shape"],))
        self.coord = np.zeros(2) if rule["coord"] is None else _pair(rule["coord"])
        self.psize = None if rule["psize"] is None else _pair(rule["psize"])
        self.layer = int(rule["layer"])
        self.active = bool(rule["active"])
        container = self.owner
        storage = container.S.get(self.storageID)
        if storage is None:
            psize = 1.0 if self.psize is None else self.psize
            storage = container.new_storage(ID=self.storageID, shape=(1,) + tuple(self.shape),
                                            psize=psize, layermap=[self.layer])
        if self.storage is not None and self.storage is not storage:
            self.storage._detach(self)
        storage._attach(self)
        storage.update_views(self)

    @property
    def accessrule(self):
        """The access rule describing this view (a new Param)."""
        return Param(storageID=self.storageID, shape=tuple(int(s) for s in self.shape),
                     coord=self.coord.copy(), psize=None if self.psize is None else self.psize.copy(),
                     layer=self.layer, active=self.active)

    def _place(self, storage, origin, rowmap):
        """Compute the buffer address from ``coord`` (called by the storage)."""
        self.storage = storage
        self.psize = storage.psize.copy()
        self.pcoord = (self.coord - origin) / self.psize
        self.dcoord = np.round(self.pcoord + 1e-5).astype(int)
        self.dlow = self.dcoord - self.shape // 2
        self.dhigh = self.dcoord + (self.shape + 1) // 2
        self.sp = self.pcoord - self.dcoord
        self.dlayer = rowmap.get(self.layer)
        lo = np.maximum(self.dlow, 0)
        self._slice = (self.dlayer, slice(int(lo[0]), int(self.dhigh[0])), slice(int(lo[1]), int(self.dhigh[1])))

    @property
    def slice(self):
        """Index tuple ``(dlayer, rows, cols)`` of this view in the storage buffer."""
        if self.dlayer is None:
            raise IndexError("view %s addresses layer %d, which storage %s does not hold yet; "
                             "call reformat() on the storage or container first"
                             % (self.ID, self.layer, self.storageID))
        return self._slice

    @property
    def data(self):
        """The live slice of the storage buffer (writes go through)."""
        return self.storage.data[self.slice]

    @data.setter
    def data(self, value):
        self.storage.data[self.slice] = value

    def __str__(self):
        return "%s -> %s[%s] : shape=%s @ coord=%s" % (
            self.ID, self.storageID, self.layer, self.shape, self.coord)


class Container(Base):
    """A group of storages of one data type, and the views onto them.

    Parameters
    ----------
    owner : Base, optional
        Managing object; its ``CType``/``FType`` attributes (when present)
        give the complex and real types, otherwise double precision.
    ID : None, int or str
        Container ID (kept as ``None`` without an owner).
    data_type : {'complex', 'real'} or numpy dtype
        Type of every storage buffer.
    """

    _PREFIX = "C"

    def __init__(self, owner=None, ID=None, data_type="complex", **kwargs):
        super().__init__(owner, ID, BeOwner=True)
        self.data_type = data_type
        self._copies = []
        self.original = self

    @property
    def dtype(self):
        """numpy dtype of the storages."""
        if self.data_type == "complex":
            return np.dtype(getattr(self.owner, "CType", np.complex128))
        if self.data_type == "real":
            return np.dtype(getattr(self.owner, "FType", np.float64))
        return np.dtype(self.data_type)

    @property
    def S(self):
        """Storages by ID."""
        return self._pool_of("S")

    storages = S

    @property
    def V(self):
        """Views by ID."""
        return self._pool_of("V")

    views = V

    @property
    def size(self):
        """Total number of elements over all storages."""
        return sum(s.data.size for s in self.S.values())

    @property
    def nbytes(self):
        """Total buffer size in bytes."""
        return sum(s.nbytes for s in self.S.values())

    def new_storage(self, ID=None, **kwargs):
        """Create a :class:`Storage` in this container (see its parameters)."""
        if ID is not None and make_id(Storage._PREFIX, ID, ()) in self.S:
            raise ValueError("storage %s already exists in container %s" % (ID, self.ID))
        return Storage(self, ID, **kwargs)

    def views_in_storage(self, storage, active_only=True):
        """Views addressing ``storage`` (only active ones by default)."""
        return [v for v in storage.views if v.active or not active_only]

    def reformat(self, also_in_copy=True):
        """Reformat every storage (see :meth:`Storage.reformat`), and the copies' too."""
        for s in self.S.values():
            s.reformat()
        if also_in_copy:
            for c in self._copies:
                for sid, s in c.S.items():
                    orig = self.S[sid]
                    if s.data.shape != orig.data.shape:
                        s.data = np.full(orig.data.shape, s.fill_value, dtype=s.dtype)
                    s._center = orig._center.copy()
                    s._psize = orig._psize.copy()
                    s.layermap = list(orig.layermap)
        return self

    def fill(self, fill=None):
        """Fill every storage with ``fill`` (see :meth:`Storage.fill`)."""
        for s in self.S.values():
            s.fill(fill)
        return self

    def copy(self, ID=None, fill=None, dtype=None):
        """A buffer container with storages of the same IDs, shapes and coordinates.

        Views of this container address the copy too (by storage ID).

        Parameters
        ----------
        ID : str, optional
            ID of the copy; default ``<ID>_copy<n>``.
        fill : scalar, optional
            Fill value; None copies the data.
        dtype : {'real', 'complex'} or dtype, optional
            Data type of the copy; default the same.
        """
        if ID is None:
            ID = "%s_copy%d" % (self.ID if self.ID is not None else "C", len(self._copies))
        new = Container(self.owner, ID=ID, data_type=self.data_type if dtype is None else dtype)
        new.original = self
        for sid, s in self.S.items():
            data = s.data if fill is None else None
            ns = Storage(new, sid, data=data, shape=s.data.shape, fill=0.0 if fill is None else fill,
                         psize=s.psize.copy(), layermap=list(s.layermap), padonly=s.padonly)
            ns._center = s._center.copy()
            ns.slices, ns.slice_distance = s.slices, s.slice_distance
            ns.fill_value = s.fill_value if fill is None else fill
        self._copies.append(new)
        return new

    def delete_copy(self, copy_IDs=None):
        """Drop the buffer copies made by :meth:`copy` (all, or those IDs)."""
        keep = []
        for c in self._copies:
            if copy_IDs is None or c.ID in copy_IDs:
                if c.owner is not None:
                    c.owner._forget(c)
            else:
                keep.append(c)
        self._copies = keep

    def _storage_for(self, v):
        return self.S[v.storageID]

    def __getitem__(self, v):
        if isinstance(v, View):
            return self._storage_for(v).data[v.slice]
        return self.S[v]

    def __setitem__(self, v, value):
        if isinstance(v, View):
            self._storage_for(v).data[v.slice] = value
        else:
            raise TypeError("container items are set through views; use container.S[ID].fill() for storages")

    def __contains__(self, key):
        return key in self.S

    def __len__(self):
        return len(self.S)

    def __iter__(self):
        return iter(self.S.values())

    # -- in-place arithmetic ------------------------------------------------
    def _inplace(self, other, op):
        if isinstance(other, Container):
            for sid, s in self.S.items():
                op(s.data, other.S[sid].data)
        else:
            for s in self.S.values():
                op(s.data, other)
        return self

    def __iadd__(self, other):
        return self._inplace(other, np.ndarray.__iadd__)

    def __isub__(self, other):
        return self._inplace(other, np.ndarray.__isub__)

    def __imul__(self, other):
        return self._inplace(other, np.ndarray.__imul__)

    def __itruediv__(self, other):
        return self._inplace(other, np.ndarray.__itruediv__)

    def fill_from(self, other):
        """Fill with a scalar, or copy the data of a container with the same storage IDs."""
        if isinstance(other, Container):
            for sid, s in self.S.items():
                s.data[...] = other.S[sid].data
        else:
            for s in self.S.values():
                s.data.fill(other)
        return self

    def __lshift__(self, other):
        return self.fill_from(other)

    __ilshift__ = __lshift__

    def allreduce(self, op=None):
        """Sum every storage over MPI ranks, in place (no-op in one process)."""
        for s in self.S.values():
            if op is None:
                parallel.allreduce(s.data)
            else:
                parallel.allreduce(s.data, op=op)
        return self

    # -- reporting ----------------------------------------------------------
    def formatted_report(self, offset=8):
        """The table of this container and its storages, as in the tutorials."""
        lines = [_REPORT_HEADER,
                 "%s : %6.1f : %s\n" % (str(self.ID).ljust(offset), self.nbytes / _MB, self.dtype)]
        for s in self.S.values():
            lines.append(s.formatted_report(offset=offset, include_header=False)[0])
        return "".join(lines)

    def info(self):
        """One line: ID, storages, memory and data type."""
        return "%s: %d storages, %.1f MB, %s" % (self.ID, len(self.S), self.nbytes / _MB, self.dtype)


class POD(Base):
    """POD: a ptychographic object descriptor.

    One coherent propagation: probe view times object view gives an exit
    wave (exit view), which the geometry propagates to the detector, where
    it meets a diffraction view and a mask view. Reading ``pod.probe``,
    ``pod.object``, ``pod.exit``, ``pod.diff`` or ``pod.mask`` returns the
    live data of the corresponding view; assigning writes into it.
    """

    _PREFIX = "P"
    #: Roles a pod's views can have.
    DEFAULT_VIEWS = ("probe", "obj", "exit", "diff", "mask")

    def __init__(self, ptycho=None, model=None, ID=None, views=None, geometry=None, **kwargs):
        """
        Parameters
        ----------
        ptycho : Base, optional
            The managing object (a Ptycho); the pod registers in its pool.
        model : object, optional
            The scan model that made this pod.
        ID : None, int or str
            Pod ID (``'P0000'``-style when None).
        views : dict
            Views by role: ``'probe'``, ``'obj'``, ``'exit'``, ``'diff'``,
            ``'mask'`` (mask optional).
        geometry : Geo
            Geometry with the propagator between sample and detector.
        """
        super().__init__(ptycho, ID, BeOwner=False)
        views = dict(views or {})
        unknown = set(views) - set(self.DEFAULT_VIEWS)
        if unknown:
            raise ValueError("unknown pod view role(s) %s; valid: %s" % (sorted(unknown), ", ".join(self.DEFAULT_VIEWS)))
        self.V = {role: views.get(role) for role in self.DEFAULT_VIEWS}
        self.model = model
        self.geometry = geometry
        for v in self.V.values():
            if v is not None:
                v.pods[self.ID] = self

    # view accessors
    pr_view = property(lambda self: self.V["probe"], doc="The probe view.")
    ob_view = property(lambda self: self.V["obj"], doc="The object view.")
    ex_view = property(lambda self: self.V["exit"], doc="The exit-wave view.")
    di_view = property(lambda self: self.V["diff"], doc="The diffraction view.")
    ma_view = property(lambda self: self.V["mask"], doc="The mask view.")

    @property
    def active(self):
        """Whether the pod takes part (its diffraction view is active)."""
        return self.V["diff"].active

    def fw(self, w):
        """Propagate an exit wave to the detector plane."""
        return self.geometry.propagator.fw(w)

    def bw(self, w):
        """Propagate a detector-plane wave back to the sample plane."""
        return self.geometry.propagator.bw(w)

    def _get(role):
        def getter(self):
            return self.V[role].data

        def setter(self, value):
            self.V[role].data = value

        return getter, setter

    probe = property(*_get("probe"), doc="Probe data of this pod (live).")
    object = property(*_get("obj"), doc="Object data of this pod (live).")
    exit = property(*_get("exit"), doc="Exit wave of this pod (live).")
    diff = property(*_get("diff"), doc="Measured intensities of this pod (live).")

    @property
    def mask(self):
        """Mask of this pod (live); ones when the pod has no mask view."""
        if self.V["mask"] is None:
            return np.ones(tuple(self.V["diff"].shape), dtype=self.V["diff"].storage.dtype)
        return self.V["mask"].data

    @mask.setter
    def mask(self, value):
        self.V["mask"].data = value

    del _get
