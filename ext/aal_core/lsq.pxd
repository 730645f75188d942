# cdef API of aal_core.lsq (see ext/lsq.pyx).

cdef class Ring:
    cdef double *t
    cdef double *v
    cdef readonly int cap, n, i

    cpdef void push(self, double t, double v)
    cpdef void clear(self)
    cpdef tuple fit(self, double since)
