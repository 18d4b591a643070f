"""Tasks as plain data: a call pickled so that a worker with other library versions rebuilds the same objects.

An ``Affine`` travels as its six numbers and a CRS as WKT (:func:`plain_call`), since their own pickles depend on
the library's version (affine 3 cannot read affine 2's); Dask futures among the arguments are passed beside the
bytes and put back in place on the worker (:func:`run_plain`).
"""

from __future__ import annotations

import copyreg
import io
import pickle
import sys
from collections import ChainMap


def _affine(coefficients):
    from affine import Affine

    return Affine(*coefficients)


def _rasterio_crs(wkt):
    from rasterio.crs import CRS

    return CRS.from_wkt(wkt)


def _pyproj_crs(wkt):
    from pyproj import CRS

    return CRS.from_wkt(wkt)


def _plain_reducers() -> dict:
    """Reducers for the objects whose own pickles depend on a library's version (affine 3 cannot read affine 2's):
    each is sent as plain numbers or text and rebuilt by the worker's library. Only for modules already imported."""
    table = {}
    affine = sys.modules.get("affine")
    if affine is not None:
        table[affine.Affine] = lambda t: (_affine, (tuple(float(v) for v in tuple(t)[:6]),))
    crs = sys.modules.get("rasterio.crs")
    if crs is not None:
        table[crs.CRS] = lambda c: (_rasterio_crs, (c.to_wkt(),))
    pyproj = sys.modules.get("pyproj")
    if pyproj is not None:
        table[pyproj.CRS] = lambda c: (_pyproj_crs, (c.to_wkt(),))
    return table


def plain_call(func, args=(), kwargs=None) -> tuple[bytes, list]:
    """A call pickled as plain data (:func:`_plain_reducers`), with its Dask futures left beside the bytes.

    Parameters
    ----------
    func : callable
        A module-level function the workers can import.
    args : tuple
        Its positional arguments.
    kwargs : dict, optional
        Its keyword arguments.

    Returns
    -------
    tuple
        ``(payload, futures)``: the pickled call and the futures among its arguments, in the order
        :func:`run_plain` puts their values back.
    """
    import cloudpickle
    from distributed import Future

    futures: list = []

    class PlainPickler(cloudpickle.Pickler):
        dispatch_table = ChainMap(_plain_reducers(), getattr(cloudpickle.Pickler, "dispatch_table",
                                                             copyreg.dispatch_table))

        def persistent_id(self, obj):
            if isinstance(obj, Future):
                futures.append(obj)
                return len(futures) - 1
            return None

    buffer = io.BytesIO()
    PlainPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((func, tuple(args), dict(kwargs or {})))
    return buffer.getvalue(), futures


def run_plain(payload: bytes, resolved: list):
    """Run (on a worker) a call pickled by :func:`plain_call`.

    Parameters
    ----------
    payload : bytes
        The pickled ``(func, args, kwargs)``.
    resolved : list
        The values of the call's futures (Dask resolves them when they are passed beside the payload).

    Returns
    -------
    object
        What the call returns.
    """

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            return resolved[pid]

    func, args, kwargs = Unpickler(io.BytesIO(payload)).load()
    return func(*args, **kwargs)
