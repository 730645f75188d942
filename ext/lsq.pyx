# cython: language_level=3
"""The trend's ring buffer of (time, value) points and its least-squares
fit, compiled: what daemon/stress/trend.py exports as `Ring`.

Why compiled: the fused model fits two windows per budget on every sample
(10-50 Hz); with numpy that was ~15 MiB of the daemon's RSS for four sums,
and each call's overhead was larger than the arithmetic.  Here a fit is one
pass over at most `capacity` doubles in C, and no Python object is made
until the result tuple.

The pure-Python reference, the same arithmetic in the same order, is
aal_core.stress.trend_ref; tests/test_trend_diff.py runs both on the same
hypothesis-generated points and asserts identical results (this module is
built with -ffp-contract=off so aarch64 does not fuse a*b+c differently).
"""
from libc.stdlib cimport malloc, free


cdef class Ring:
    """The last `capacity` (t, v) points, oldest overwritten first."""

    def __cinit__(self, int capacity=128):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.t = <double *>malloc(capacity * sizeof(double))
        self.v = <double *>malloc(capacity * sizeof(double))
        if self.t == NULL or self.v == NULL:
            raise MemoryError()
        self.cap = capacity
        self.n = 0
        self.i = 0

    def __dealloc__(self):
        free(self.t)
        free(self.v)

    cpdef void push(self, double t, double v):
        self.t[self.i] = t
        self.v[self.i] = v
        self.i += 1
        if self.i == self.cap:
            self.i = 0
        if self.n < self.cap:
            self.n += 1

    cpdef void clear(self):
        self.n = 0
        self.i = 0

    def window(self, double since):
        """([t], [v]) of the points at or after `since`, in storage order."""
        cdef int k
        ts, vs = [], []
        for k in range(self.n):
            if self.t[k] >= since:
                ts.append(self.t[k])
                vs.append(self.v[k])
        return ts, vs

    cpdef tuple fit(self, double since):
        """(slope per second, R², points, time span) of the points at or after `since`."""
        cdef int k, m = 0
        cdef double st = 0.0, sv = 0.0, mt, mv, dt, dv
        cdef double sxx = 0.0, sxy = 0.0, syy = 0.0, lo = 0.0, hi = 0.0, slope, r2, den
        cdef const double *T = self.t
        cdef const double *V = self.v
        for k in range(self.n):
            if T[k] >= since:
                if m == 0:
                    lo = hi = T[k]
                elif T[k] < lo:
                    lo = T[k]
                elif T[k] > hi:
                    hi = T[k]
                st += T[k]
                sv += V[k]
                m += 1
        if m < 2:
            return 0.0, 0.0, m, 0.0
        mt = st / m
        mv = sv / m
        for k in range(self.n):
            if T[k] >= since:
                dt = T[k] - mt
                dv = V[k] - mv
                sxx += dt * dt
                sxy += dt * dv
                syy += dv * dv
        if sxx <= 0.0:
            return 0.0, 0.0, m, 0.0
        slope = sxy / sxx
        den = sxx * syy     # > 0 each, yet their product can underflow to 0
        r2 = (sxy * sxy) / den if den > 0.0 else 0.0
        return slope, r2, m, hi - lo
