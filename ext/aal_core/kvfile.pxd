# cdef API of aal_core.kvfile (see ext/kvfile.pyx).

cdef Py_ssize_t parse_keyed_c(const char* b, Py_ssize_t n, const char** kptr, Py_ssize_t* klen,
                              Py_ssize_t nkeys, unsigned long long* vals, char* seen) noexcept nogil
cdef long long parse_value_c(const char* b, Py_ssize_t n, bint* ok) noexcept nogil

cdef class _Keys:
    cdef tuple keys
    cdef Py_ssize_t n
    cdef const char** ptr
    cdef Py_ssize_t* length
    cdef unsigned long long* vals
    cdef char* seen
    cdef tuple result(self)

cdef class _OpenFile:
    cdef int fd
    cdef char* buf
    cdef Py_ssize_t cap
    cdef readonly str path
    cdef Py_ssize_t read_all(self) except -1

cdef class KeyedFile(_OpenFile):
    cdef _Keys _keys
    cpdef tuple read(self)

cdef class ValueFile(_OpenFile):
    cpdef object read(self)
