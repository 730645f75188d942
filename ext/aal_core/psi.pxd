# cdef API of aal_core.psi (see ext/psi.pyx).
from aal_core.kvfile cimport _OpenFile

cdef int parse_psi_into(const char* b, Py_ssize_t n, double* avg, unsigned long long* total,
                        char* seen) noexcept nogil

cdef class PsiFile(_OpenFile):
    cpdef tuple read(self)
